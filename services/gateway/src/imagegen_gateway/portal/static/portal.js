// imagegen portal: the user menu (keyboard accessible, WAI-ARIA menu button pattern) and copy buttons.
// No inline scripts anywhere: the Content-Security-Policy allows only this file.
"use strict";

function setupUserMenu(root) {
  const button = root.querySelector("#user-menu-button");
  const menu = root.querySelector("#user-menu");
  if (!button || !menu) return;
  const items = () => Array.from(menu.querySelectorAll('[role="menuitem"]'));
  const isOpen = () => button.getAttribute("aria-expanded") === "true";

  function open(focusIndex) {
    menu.hidden = false;
    button.setAttribute("aria-expanded", "true");
    const all = items();
    if (all.length) all[(focusIndex + all.length) % all.length].focus();
  }
  function close(returnFocus) {
    menu.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (returnFocus) button.focus();
  }

  button.addEventListener("click", () => (isOpen() ? close(false) : open(0)));
  button.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      open(0);
    } else if (event.key === "ArrowUp") {
      event.preventDefault();
      open(-1);
    }
  });
  menu.addEventListener("keydown", (event) => {
    const all = items();
    const index = all.indexOf(document.activeElement);
    if (event.key === "ArrowDown") {
      event.preventDefault();
      all[(index + 1) % all.length].focus();
    } else if (event.key === "ArrowUp") {
      event.preventDefault();
      all[(index - 1 + all.length) % all.length].focus();
    } else if (event.key === "Home") {
      event.preventDefault();
      all[0].focus();
    } else if (event.key === "End") {
      event.preventDefault();
      all[all.length - 1].focus();
    } else if (event.key === "Escape") {
      event.preventDefault();
      close(true);
    } else if (event.key === "Tab") {
      close(false);
    }
  });
  document.addEventListener("click", (event) => {
    if (isOpen() && !root.contains(event.target)) close(false);
  });
}

function setupCopyButtons() {
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.querySelector(button.getAttribute("data-copy"));
      if (!source) return;
      const text = source.textContent;
      const label = button.textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (error) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Press Ctrl+C";
      }
      setTimeout(() => (button.textContent = label), 2000);
    });
  });
}

function setupPrices() {
  const form = document.querySelector("form[data-prices]");
  if (!form) return;
  const prices = JSON.parse(form.getAttribute("data-prices"));
  const out = form.querySelector("[data-price-out]");
  const update = () => {
    const price = (prices[form.elements.model.value] || {})[form.elements.size.value];
    out.textContent = price === undefined ? "This model does not make this size" : `${price} credits`;
  };
  form.elements.model.addEventListener("change", update);
  form.elements.size.addEventListener("change", update);
  update();
}

function setupPolling() {
  const box = document.querySelector("[data-poll]");
  if (!box) return;
  const status = box.querySelector("[data-status]");
  const holder = box.querySelector("[data-image]");
  let tries = 0;
  const poll = async () => {
    tries += 1;
    let data = null;
    try {
      const reply = await fetch(box.getAttribute("data-poll"), { credentials: "same-origin" });
      if (reply.ok) data = await reply.json();
    } catch (error) {
      data = null;
    }
    if (data) {
      document.querySelectorAll("[data-balance]").forEach((el) => {
        el.textContent = `${data.balance.toLocaleString("en-US")} credits`;
      });
      if (data.status === "completed") {
        status.textContent = `Done: ${data.credits} credits.`;
        const link = document.createElement("a");
        link.href = data.url;
        const img = document.createElement("img");
        img.src = data.url;
        img.alt = "The generated image";
        link.appendChild(img);
        holder.replaceChildren(link);
        return;
      }
      if (data.status === "failed") {
        status.textContent = `The image could not be made: ${data.error || "unknown error"}. Your credits were returned.`;
        return;
      }
      status.textContent = data.status === "processing" ? "Generating your image…" : "Waiting for a generator…";
    }
    if (tries < 300) setTimeout(poll, 1000);
    else status.textContent = "This is taking long; see Usage for the result later.";
  };
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-usermenu]").forEach(setupUserMenu);
  setupCopyButtons();
  setupPrices();
  setupPolling();
});
