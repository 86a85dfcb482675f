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

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-usermenu]").forEach(setupUserMenu);
  setupCopyButtons();
});
