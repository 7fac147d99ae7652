// Progressive enhancement: while the worker runs a step, ask for the status
// and reload the page when it changes, so nobody has to press F5.
(function () {
  var section = document.querySelector("[data-status-url]");
  if (!section) return;
  var waiting = ["pending", "detecting", "verifying", "handing_over", "awaiting_admin_consent"];
  var shown = section.getAttribute("data-status");
  if (waiting.indexOf(shown) === -1) return;
  var delay = 700, polls = 0;
  function poll() {
    if (++polls > 1000) return; // bounded: a tab left open does not poll forever
    fetch(section.getAttribute("data-status-url"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.json(); })
      .then(function (data) {
        if (data.status !== shown) { window.location.reload(); return; }
        var label = section.querySelector("[data-testid=status-label]");
        if (label) label.textContent = data.label;
        setTimeout(poll, Math.min(delay *= 1.2, 5000));
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, delay);
})();
