// Tether annotation page: keyboard shortcuts and time spent. Plain JavaScript, no build step; the forms work
// without it (this file only fills them faster). Served from /static under a CSP that allows no inline script.
(function () {
  "use strict";

  let started = performance.now();
  let hiddenSince = null;
  let hiddenMs = 0;
  let rankOrder = [];      // shown indices pressed so far (ranking)
  let currentAspect = 0;   // the marked row (rating)

  function ws() { return document.getElementById("workspace"); }
  function form() { return document.getElementById("answer"); }

  function reset() {
    started = performance.now();
    hiddenMs = 0;
    hiddenSince = document.hidden ? performance.now() : null;
    rankOrder = [];
    currentAspect = 0;
    markAspect();
    highlightWinner();
  }

  // Time the page was hidden (another tab) does not count as time spent.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { hiddenSince = performance.now(); }
    else if (hiddenSince !== null) { hiddenMs += performance.now() - hiddenSince; hiddenSince = null; }
  });

  function fillTime() {
    const f = form();
    if (!f) return;
    const spent = Math.max(0, Math.round(performance.now() - started - hiddenMs));
    f.querySelector("input[name=time_spent_ms]").value = String(spent);
  }
  // Capture phase: runs before HTMX reads the form's values.
  document.addEventListener("submit", function (e) { if (e.target && e.target.id === "answer") fillTime(); }, true);

  function flash(text) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.replaceChildren();
    const div = document.createElement("div");
    div.className = "error-box";
    div.setAttribute("role", "alert");
    div.textContent = text;
    box.appendChild(div);
    clearTimeout(flash.timer);
    flash.timer = setTimeout(function () { box.replaceChildren(); }, 4000);
  }

  function clearFlash() { const box = document.getElementById("flash"); if (box) box.replaceChildren(); }

  // ---- pairwise --------------------------------------------------------------------------------------------------
  function highlightWinner() {
    const w = ws();
    if (!w || w.dataset.kind !== "pairwise") return;
    const picked = w.querySelector("input[name=pick]:checked");
    const side = picked ? picked.dataset.side : null;
    w.querySelectorAll(".resp").forEach(function (card) {
      card.classList.toggle("wins", (side === "a" && card.classList.contains("side-a")) || (side === "b" && card.classList.contains("side-b")));
    });
  }
  document.addEventListener("change", function (e) { if (e.target && e.target.name === "pick") highlightWinner(); });

  // ---- ranking ---------------------------------------------------------------------------------------------------
  function rankSelects() { return Array.from(ws().querySelectorAll("select[name^=rank_]")); }

  function showRanks() {
    const selects = rankSelects();
    selects.forEach(function (sel, shown) {
      const pos = rankOrder.indexOf(shown);
      sel.value = pos >= 0 ? String(pos + 1) : "";
      const badge = ws().querySelector('.resp[data-shown="' + shown + '"] [data-rank-badge]');
      if (badge) badge.textContent = pos >= 0 ? "#" + (pos + 1) : "";
    });
  }

  function rankPress(shown) {
    const k = rankSelects().length;
    if (shown >= k || rankOrder.indexOf(shown) >= 0) return;
    rankOrder.push(shown);
    if (rankOrder.length === k - 1) {  // the last one is then known
      for (let i = 0; i < k; i++) if (rankOrder.indexOf(i) < 0) rankOrder.push(i);
    }
    showRanks();
  }

  // ---- rating ----------------------------------------------------------------------------------------------------
  function aspectRows() { const w = ws(); return w ? Array.from(w.querySelectorAll("tr[data-aspect]")) : []; }

  function markAspect() {
    aspectRows().forEach(function (row, i) { row.classList.toggle("current", i === currentAspect); });
  }

  function rate(digit) {
    const rows = aspectRows();
    if (!rows.length) return;
    const input = rows[currentAspect].querySelector('input[value="' + digit + '"]');
    if (!input) return;
    input.checked = true;
    if (currentAspect < rows.length - 1) currentAspect += 1;
    markAspect();
  }

  // ---- complete? -------------------------------------------------------------------------------------------------
  function missing() {
    const w = ws();
    const kind = w.dataset.kind;
    if (kind === "pairwise" && !w.querySelector("input[name=pick]:checked")) return "Choose which response is better first (number keys).";
    if (kind === "ranking" && rankSelects().some(function (s) { return !s.value; })) return "Rank every response first (press their numbers, best first).";
    if (kind === "rating") {
      const unrated = aspectRows().filter(function (row) { return !row.querySelector("input:checked"); });
      if (unrated.length) return "Rate every aspect first (number keys, arrows move).";
    }
    return null;
  }

  function submit() {
    const problem = missing();
    if (problem) { flash(problem); return; }
    clearFlash();
    form().requestSubmit();
  }

  function openBox(id) {
    const box = document.getElementById(id);
    if (!box) return;
    box.open = true;
    const field = box.querySelector("textarea, input[type=radio]");
    if (field) field.focus();
  }

  // ---- keys ------------------------------------------------------------------------------------------------------
  function digitOf(e) {
    const m = /^(Digit|Numpad)([0-9])$/.exec(e.code || "");
    if (m) return Number(m[2]);
    return /^[0-9]$/.test(e.key) ? Number(e.key) : null;
  }

  document.addEventListener("keydown", function (e) {
    const w = ws();
    const target = e.target;
    const start = document.getElementById("start-form");
    if (w && start && !form()) {  // no task yet: Enter takes the next one (a focused link or button does its own)
      if (e.key === "Enter" && !e.ctrlKey && !e.metaKey && !(target && target.closest && target.closest("a[href], button"))) {
        e.preventDefault(); start.requestSubmit();
      }
      return;
    }
    if (!w || !form()) return;
    const typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text") || target.tagName === "SELECT");
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); submit(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing) {
      if (e.key === "Escape") { target.blur(); e.preventDefault(); }
      return;
    }
    // Enter on a focused link, button or summary does what it does anywhere (a link in a completion opens);
    // Escape leaves the link, so Enter submits again.
    if (target && target.closest && target.closest("a[href], button, summary")) {
      if (e.key === "Enter") return;
      if (e.key === "Escape") { target.blur(); e.preventDefault(); return; }
    }
    const skipBox = document.getElementById("skip-box");
    const digit = digitOf(e);
    if (skipBox && skipBox.open) {  // the skip box has its own keys
      if (e.key === "Escape") { skipBox.open = false; e.preventDefault(); return; }
      if (digit !== null) {
        const reason = skipBox.querySelector('input[name=reason][data-key="' + digit + '"]');
        if (reason) { reason.checked = true; reason.focus(); e.preventDefault(); }
        return;
      }
      if (e.key === "Enter") { e.preventDefault(); document.getElementById("skip-form").requestSubmit(); }
      return;
    }
    if (digit !== null && e.shiftKey) {
      const flag = w.querySelector('input[name=flag][data-flag="' + digit + '"]');
      if (flag) { flag.checked = !flag.checked; e.preventDefault(); }
      return;
    }
    if (digit !== null) {
      const kind = w.dataset.kind;
      if (kind === "pairwise") {
        const input = w.querySelector('input[name=pick][data-key="' + digit + '"]');
        if (input) { input.checked = true; highlightWinner(); e.preventDefault(); }
      } else if (kind === "ranking") {
        if (digit >= 1) { rankPress(digit - 1); e.preventDefault(); }
      } else if (kind === "rating") {
        rate(digit); e.preventDefault();
      }
      return;
    }
    switch (e.key) {
      case "Enter": e.preventDefault(); submit(); break;
      case "Backspace":
        if (w.dataset.kind === "ranking") { rankOrder = rankOrder.slice(0, Math.max(0, rankOrder.length - (rankOrder.length === rankSelects().length ? 2 : 1))); showRanks(); e.preventDefault(); }
        break;
      case "ArrowDown": if (aspectRows().length) { currentAspect = Math.min(aspectRows().length - 1, currentAspect + 1); markAspect(); e.preventDefault(); } break;
      case "ArrowUp": if (aspectRows().length) { currentAspect = Math.max(0, currentAspect - 1); markAspect(); e.preventDefault(); } break;
      case "s": case "S": if (skipBox) { skipBox.open = true; const first = skipBox.querySelector("input[name=reason]"); if (first) first.focus(); e.preventDefault(); } break;
      case "c": case "C": openBox("critique-box"); e.preventDefault(); break;
      case "w": case "W": openBox("rewrite-box"); e.preventDefault(); break;
      case "g": case "G": w.classList.toggle("no-guide"); e.preventDefault(); break;
      default: break;
    }
  });

  // Manual rank changes through the selects keep the keyboard order in step.
  document.addEventListener("change", function (e) {
    if (!e.target || !e.target.name || e.target.name.indexOf("rank_") !== 0) return;
    const selects = rankSelects();
    const ranked = selects.map(function (s, i) { return [Number(s.value) || 99, i]; }).filter(function (p) { return p[0] !== 99; });
    ranked.sort(function (a, b) { return a[0] - b[0]; });
    rankOrder = ranked.map(function (p) { return p[1]; });
  });

  document.addEventListener("click", function (e) {
    const opener = e.target && e.target.closest ? e.target.closest("[data-skip-open]") : null;
    if (opener) { const box = document.getElementById("skip-box"); if (box) { box.open = true; box.scrollIntoView({ block: "nearest" }); } }
  });

  // A new task arrived (HTMX swapped the workspace): start its clock, scroll to the top.
  document.addEventListener("htmx:afterSwap", function (e) {
    const target = e.detail && e.detail.target;
    if (target && target.id === "workspace") { window.scrollTo(0, 0); reset(); }
  });

  document.addEventListener("DOMContentLoaded", reset);
})();
