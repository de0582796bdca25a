// Live decision changes: the server's events update every element that shows a device's
// decision, and the overview's list of recent changes, without a reload.
(function () {
  "use strict";
  if (!window.EventSource) { return; }
  var source = new EventSource("/ui/events");
  // Marks the page once the stream is open: from then on no change is missed.
  source.addEventListener("open", function () {
    document.body.setAttribute("data-live", "connected");
  });
  source.addEventListener("error", function () {
    document.body.setAttribute("data-live", "reconnecting");
  });
  source.addEventListener("decision", function (message) {
    var change = JSON.parse(message.data);
    document.querySelectorAll("[data-device]").forEach(function (element) {
      if (element.getAttribute("data-device") !== change.device) { return; }
      element.querySelectorAll("[data-live=state]").forEach(function (state) {
        state.textContent = change.state;
        state.className = change.state;
      });
      element.querySelectorAll("[data-live=reason]").forEach(function (reason) {
        reason.textContent = change.reason;
      });
    });
    var list = document.getElementById("recent-changes");
    if (list) {
      var item = document.createElement("li");
      item.setAttribute("data-device", change.device);
      var link = document.createElement("a");
      link.href = "/ui/devices/" + encodeURIComponent(change.device);
      link.textContent = change.device;
      var state = document.createElement("strong");
      state.setAttribute("data-live", "state");
      state.className = change.state;
      state.textContent = change.state;
      var reason = document.createElement("span");
      reason.setAttribute("data-live", "reason");
      reason.textContent = change.reason;
      item.append(link, " ", state, " (", reason, ", ", change.source, ")");
      list.prepend(item);
      var empty = document.getElementById("no-recent-changes");
      if (empty) { empty.remove(); }
    }
  });
})();
