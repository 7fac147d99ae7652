// Microsoft steps. Copy the admin link; and when the admin consented while
// this tab was waiting (migration.js reloads on the status change), continue
// to Microsoft by itself: one redirect, that usually passes without a prompt.
(function () {
  var key = "microsoft-waiting:" + window.location.pathname;
  function remember(value) { try { if (value) { sessionStorage.setItem(key, "1"); } else { sessionStorage.removeItem(key); } } catch (e) { /* storage off */ } }
  function remembered() { try { return sessionStorage.getItem(key) === "1"; } catch (e) { return false; } }

  if (document.querySelector("[data-testid=admin-consent], [data-testid=admin-path]")) remember(true);

  var copy = document.querySelector("[data-copy]");
  if (copy) {
    copy.addEventListener("click", function () {
      var field = document.querySelector(".copy-source");
      field.select();
      var done = function () { copy.textContent = copy.getAttribute("data-copied"); };
      if (navigator.clipboard) { navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); }); }
      else { document.execCommand("copy"); done(); }
    });
  }

  var resume = document.querySelector("form[data-auto-continue]");
  if (resume && remembered()) {
    remember(false);
    resume.submit();
  }
})();
