// ferry console: keeps the parts of a page marked data-live current without a reload. Every
// data-refresh-ms (the instances' heartbeat interval) it fetches the same page and swaps in the new
// content of each [data-live] element; forms are outside those parts, so nothing being typed is lost.
// The HTML comes from this server, rendered with every value escaped. Hidden tabs do not poll.
"use strict";
(function () {
  const every = Number(document.body.dataset.refreshMs || 0);
  if (!every || !document.querySelector("[data-live]")) return;
  const status = document.getElementById("live-status");
  async function refresh() {
    if (document.hidden) return;  // a tab in the background asks the server for nothing; it catches up when shown
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
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
})();

// The chat box of an LLM endpoint (the service page, under ferry serve): the message goes to the OpenAI chat route
// of this server through /console/chat (which takes the login cookie where the server needs a token), streamed;
// each chunk's text is appended as text (never as markup).
(function () {
  for (const form of document.querySelectorAll("form.chat")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const answer = form.querySelector(".answer");
      const message = form.querySelector("textarea").value;
      answer.textContent = "";
      const body = { model: form.dataset.endpoint, messages: [{ role: "user", content: message }], stream: true };
      try {
        const response = await fetch(form.dataset.url, {
          method: "POST", body: JSON.stringify(body),
          headers: { "content-type": "application/json", "x-ferry-console": "chat" }, credentials: "same-origin",
        });
        if (!response.ok) throw new Error((await response.json()).error || "HTTP " + response.status);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let pending = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          pending += decoder.decode(value, { stream: true });
          const lines = pending.split("\n");
          pending = lines.pop();
          for (const line of lines) {
            if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
            const chunk = JSON.parse(line.slice(6));
            const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
            if (delta && delta.content) answer.textContent += delta.content;
          }
        }
        answer.dataset.done = "1";
      } catch (error) {
        answer.textContent = "error: " + error.message;
        answer.dataset.done = "1";
      }
    });
  }
})();
