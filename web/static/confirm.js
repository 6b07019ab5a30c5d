// A form with data-confirm asks before it is sent (disabling an application, removing its
// certificate). An external file: the Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  var forms = document.querySelectorAll("form[data-confirm]");
  for (var i = 0; i < forms.length; i++) {
    forms[i].addEventListener("submit", function (event) {
      if (!window.confirm(this.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  }
})();
