// RA portal: the import progress bar (polls a small JSON endpoint) and the print button.
// An external file: the Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  var box = document.getElementById("import-progress");
  if (box && box.getAttribute("data-finished") !== "true") {
    var url = box.getAttribute("data-progress-url");
    var set = function (id, value) {
      var el = document.getElementById(id);
      if (el) { el.textContent = String(value); }
    };
    var poll = function () {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (p) {
          var bar = document.getElementById("import-bar");
          if (bar) { bar.value = p.percent; }
          set("import-percent", p.percent);
          set("import-processed", p.processed);
          set("import-registered", p.registered);
          set("import-duplicates", p.duplicates);
          set("import-invalid", p.invalid);
          if (p.finished) { window.location.reload(); } else { window.setTimeout(poll, 700); }
        })
        .catch(function () { window.setTimeout(poll, 3000); });
    };
    window.setTimeout(poll, 300);
  }
  var buttons = document.querySelectorAll("[data-print]");
  for (var i = 0; i < buttons.length; i++) {
    buttons[i].addEventListener("click", function () { window.print(); });
  }
})();
