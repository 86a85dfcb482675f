// imagegen portal: the purchase success page while a payment is processing. Asks for the purchase's
// state every 2 s (for up to 10 minutes) and reloads the page once it changes, so the server renders
// the new balance in the page and the header. No meta refresh, no inline script.
"use strict";

(function () {
  const card = document.querySelector("[data-purchase]");
  if (!card || card.dataset.state !== "pending") return;
  const url = "/account/credits/purchases/" + encodeURIComponent(card.dataset.purchase);
  let tries = 0;
  async function poll() {
    tries += 1;
    try {
      const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (answer.ok) {
        const body = await answer.json();
        if (body.state !== "pending") {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // offline for a moment: try again
    }
    if (tries < 300) window.setTimeout(poll, 2000);
  }
  window.setTimeout(poll, 1000);
})();
