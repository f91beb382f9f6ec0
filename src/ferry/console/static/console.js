// ferry console: keeps the parts of a page marked data-live current without a reload. Every
// data-refresh-ms (the instances' heartbeat interval) it fetches the same page and swaps in the new
// content of each [data-live] element; forms are outside those parts, so nothing being typed is lost.
// The HTML comes from this server, rendered with every value escaped.
"use strict";
(function () {
  const every = Number(document.body.dataset.refreshMs || 0);
  if (!every || !document.querySelector("[data-live]")) return;
  const status = document.getElementById("live-status");
  async function refresh() {
    try {
      const answer = await fetch(location.href, { headers: { "x-ferry-live": "1" }, credentials: "same-origin" });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
      for (const part of document.querySelectorAll("[data-live]")) {
        const next = fresh.querySelector('[data-live="' + part.dataset.live + '"]');
        if (next && next.innerHTML !== part.innerHTML) part.innerHTML = next.innerHTML;
      }
      if (status) status.textContent = "live, updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (status) status.textContent = "not updating: " + error.message;
    }
  }
  setInterval(refresh, every);
})();
