// Keyboard shortcuts for the rating page: 1-5 rate, s skips, u undoes the last rating; Esc leaves the rationale box.
// Served as a file (the CSP allows no inline script); the page works without it.
(function () {
  const form = document.getElementById("rate-form");
  if (!form) return;
  let sent = false;
  form.addEventListener("submit", function (event) {
    if (sent) event.preventDefault();  // one submit per pair, even on a double press
    sent = true;
  });
  document.addEventListener("keydown", function (event) {
    const target = event.target;
    // typing in a text box is text; a focused radio (a criterion just answered) still takes the keys
    const typing = target instanceof HTMLTextAreaElement ||
      (target instanceof HTMLInputElement && target.type !== "radio" && target.type !== "checkbox");
    if (typing) {
      if (event.key === "Escape") target.blur();
      if (event.key === "Enter") event.preventDefault();  // Enter would submit with the first button
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const button = document.querySelector('button[data-key="' + event.key.toLowerCase() + '"]');
    if (button) {
      event.preventDefault();
      button.click();
    }
  });
})();
