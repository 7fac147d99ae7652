// A form sent back with errors: put the cursor on the first field that needs fixing, so keyboard and
// screen-reader users land on it and hear its message (aria-describedby points to it).
document.addEventListener("DOMContentLoaded", () => {
  const invalid = document.querySelector('main [aria-invalid="true"]');
  if (invalid) invalid.focus();
});
