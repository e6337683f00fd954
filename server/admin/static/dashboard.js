// nodetrust dashboard: sort the nodes table by a column, filter it by text and status.
// Plain DOM, no framework, no build step; loaded as a same-origin script (CSP script-src 'self').
"use strict";
(function () {
  const table = document.getElementById("nodes-table");
  if (!table) return;
  const tbody = table.tBodies[0];
  const rows = Array.from(tbody.querySelectorAll("tr.node"));
  const filter = document.getElementById("node-filter");
  const status = document.getElementById("status-filter");
  const count = document.getElementById("node-count");

  function cellValue(row, index, type) {
    const raw = row.cells[index].dataset.value || "";
    return type === "number" ? Number(raw) : raw.toLowerCase();
  }

  function sortBy(th) {
    const index = th.cellIndex;
    const type = th.dataset.type;
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach((h) => h.setAttribute("aria-sort", "none"));
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.sort((a, b) => {
      const x = cellValue(a, index, type);
      const y = cellValue(b, index, type);
      return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
    });
    rows.forEach((r) => tbody.appendChild(r));
  }

  function applyFilter() {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const wanted = status.value;
    let shown = 0;
    rows.forEach((row) => {
      const text = row.textContent.toLowerCase();
      const ok = words.every((w) => text.includes(w)) &&
        (!wanted || row.dataset.status === wanted);
      row.hidden = !ok;
      if (ok) shown += 1;
    });
    count.textContent = shown + " of " + rows.length + " nodes";
  }

  table.querySelectorAll("th button").forEach((button) => {
    button.addEventListener("click", () => sortBy(button.parentElement));
  });
  filter.addEventListener("input", applyFilter);
  status.addEventListener("change", applyFilter);
  table.classList.add("interactive");
})();
