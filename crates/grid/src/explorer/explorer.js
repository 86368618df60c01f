// The explorer's live updates. Pages work without this script; with it, every element marked
// data-live is refreshed from the same URL every data-refresh seconds, without a reload.
(() => {
  "use strict";
  const secs = Number(document.body.dataset.refresh || 0);
  if (!secs || !window.fetch || !window.DOMParser) return;
  const status = document.getElementById("live-status");
  let busy = false;
  let failed = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const answer = await fetch(location.href, { cache: "no-store", headers: { Accept: "text/html" } });
      if (!answer.ok) throw new Error("status " + answer.status);
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
      let changed = 0;
      for (const old of document.querySelectorAll("[data-live]")) {
        const next = fresh.getElementById(old.id);
        if (next && next.innerHTML !== old.innerHTML) {
          old.innerHTML = next.innerHTML;
          changed += 1;
        }
      }
      document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
      if (status && (changed || failed)) {
        status.textContent = "Updated at " + new Date().toLocaleTimeString() + ".";
      }
      failed = false;
    } catch (e) {
      if (status && !failed) status.textContent = "Live updates paused: the grid does not answer.";
      failed = true;
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, secs * 1000);
})();
