// The report's offline target look-up (paintbench.report.targets) and sortable tables. No network, no library.
// Ranks, p and q follow paintbench.report.query: rank by |cosine| (annotated first on ties), p = (1 + #unannotated
// pairs of the condition with |cosine| >= s) / (1 + #unannotated pairs), q = Benjamini-Hochberg over the list.
(function () {
  'use strict';

  function cellValue(cell) {
    var text = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    var number = parseFloat(text);
    return isNaN(number) || !/^[-+0-9.eE]/.test(text) ? text.toLowerCase() : number;
  }

  function makeSortable(table) {
    var headers = table.querySelectorAll('tr:first-child th');
    headers.forEach(function (th, column) {
      th.style.cursor = 'pointer';
      th.title = 'sort by this column';
      th.addEventListener('click', function () {
        var rows = Array.prototype.slice.call(table.querySelectorAll('tr')).slice(1);
        var ascending = th.dataset.order !== 'asc';
        headers.forEach(function (other) { delete other.dataset.order; });
        th.dataset.order = ascending ? 'asc' : 'desc';
        rows.sort(function (a, b) {
          var x = cellValue(a.children[column]), y = cellValue(b.children[column]);
          if (x === y) { return 0; }
          return (x < y ? -1 : 1) * (ascending ? 1 : -1);
        });
        rows.forEach(function (row) { row.parentNode.appendChild(row); });
      });
    });
  }

  function decodeCosines(text, scale) {
    var bytes = atob(text), view = new DataView(new ArrayBuffer(bytes.length));
    for (var i = 0; i < bytes.length; i++) { view.setUint8(i, bytes.charCodeAt(i)); }
    var values = new Float64Array(bytes.length / 2);
    for (var j = 0; j < values.length; j++) { values[j] = view.getInt16(2 * j, true) / scale; }
    return values;
  }

  function editDistance(a, b) {
    var previous = [], current, i, j;
    for (j = 0; j <= b.length; j++) { previous.push(j); }
    for (i = 1; i <= a.length; i++) {
      current = [i];
      for (j = 1; j <= b.length; j++) {
        current.push(Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1)));
      }
      previous = current;
    }
    return previous[b.length];
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }

  function benjaminiHochberg(p) {
    var order = p.map(function (_, i) { return i; }).sort(function (a, b) { return p[a] - p[b]; });
    var q = new Array(p.length), running = 1;
    for (var r = order.length - 1; r >= 0; r--) {
      running = Math.min(running, p[order[r]] * p.length / (r + 1));
      q[order[r]] = running;
    }
    return q;
  }

  function setUp() {
    var node = document.getElementById('lookup-data');
    if (!node) { return; }
    var data = JSON.parse(node.textContent);
    var compounds = {}, genes = {}, known = [];
    data.compounds.forEach(function (id, i) {
      compounds[id.toLowerCase()] = i;
      compounds[data.compound_names[i].toLowerCase()] = i;
      known.push(data.compound_names[i]);
    });
    data.genes.forEach(function (gene, i) { genes[gene.toLowerCase()] = i; known.push(gene); });
    Object.keys(data.feature_sets).forEach(function (fs) {
      data.feature_sets[fs].forEach(function (condition) {
        condition.values = decodeCosines(condition.cosine, data.scale);
        var annotated = new Uint8Array(condition.values.length);
        condition.annotated.forEach(function (k) { annotated[k] = 1; });
        condition.isAnnotated = annotated;
        var background = [];
        for (var k = 0; k < condition.values.length; k++) {
          if (!annotated[k]) { background.push(Math.abs(condition.values[k])); }
        }
        condition.background = Float64Array.from(background).sort();
      });
    });

    function pValue(sorted, score) {
      var low = 0, high = sorted.length;  // first index with sorted[i] >= score
      while (low < high) { var mid = (low + high) >> 1; if (sorted[mid] < score) { low = mid + 1; } else { high = mid; } }
      return (1 + sorted.length - low) / (1 + sorted.length);
    }

    function rankedRows(condition, kind, index) {
      var rows = [], nGenes = condition.genes.length;
      var partners = kind === 'compound' ? condition.genes : condition.compounds;
      var position = (kind === 'compound' ? condition.compounds : condition.genes).indexOf(index);
      if (position < 0) { return null; }
      partners.forEach(function (partner, j) {
        var k = kind === 'compound' ? position * nGenes + j : j * nGenes + position;
        var cosine = condition.values[k];
        rows.push({partner: kind === 'compound' ? data.genes[partner] : data.compound_names[partner],
                   cosine: cosine, score: Math.abs(cosine), annotated: condition.isAnnotated[k] === 1,
                   p: pValue(condition.background, Math.abs(cosine))});
      });
      var q = benjaminiHochberg(rows.map(function (r) { return r.p; }));
      rows.forEach(function (r, i) { r.q = q[i]; });
      rows.sort(function (a, b) { return b.score - a.score || (b.annotated - a.annotated); });
      rows.forEach(function (r, i) { r.rank = i + 1; });
      return rows;
    }

    function table(fs, rows, top, kind) {
      var body = rows.slice(0, top).map(function (r) {
        return '<tr' + (r.annotated ? ' class="annotated"' : '') + '><td>' + r.rank + '</td><td class="l">' +
          escapeHtml(r.partner) + '</td><td data-sort="' + r.cosine + '">' + r.cosine.toFixed(3) + '</td><td data-sort="' +
          r.q + '">' + r.q.toPrecision(2) + '</td><td class="l">' + (r.annotated ? 'annotated' : '') + '</td></tr>';
      }).join('');
      return '<table class="lookup sortable" data-feature-set="' + escapeHtml(fs) + '"><caption>' + escapeHtml(fs) +
        '</caption><tr><th>rank</th><th class="l">' + (kind === 'compound' ? 'gene' : 'compound') +
        '</th><th>cosine</th><th>q</th><th class="l">target</th></tr>' + body + '</table>';
    }

    function suggest(name) {
      var wanted = name.toLowerCase();
      var scored = known.map(function (k) { return [editDistance(wanted, k.toLowerCase()), k]; });
      scored.sort(function (a, b) { return a[0] - b[0]; });
      return scored.filter(function (s) { return s[0] <= Math.max(2, Math.floor(wanted.length / 3)); })
        .slice(0, 3).map(function (s) { return s[1]; });
    }

    function lookUp(name) {
      var message = document.getElementById('lookup-message'), results = document.getElementById('lookup-results');
      var top = parseInt(document.getElementById('lookup-top').value, 10) || 10;
      var key = name.trim().toLowerCase(), kind = null, index = -1;
      results.innerHTML = '';
      if (key in compounds) { kind = 'compound'; index = compounds[key]; }
      else if (key in genes) { kind = 'gene'; index = genes[key]; }
      if (kind === null) {
        var close = suggest(name.trim());
        message.innerHTML = 'Unknown compound or gene "' + escapeHtml(name.trim()) + '"' + (close.length ?
          '; did you mean ' + close.map(function (c) {
            return '<a href="#targets" class="suggestion" data-name="' + escapeHtml(c) + '">' + escapeHtml(c) + '</a>';
          }).join(', ') + '?' : '.');
        message.querySelectorAll('a.suggestion').forEach(function (a) {
          a.addEventListener('click', function (event) {
            event.preventDefault();
            document.getElementById('lookup-input').value = a.dataset.name;
            lookUp(a.dataset.name);
          });
        });
        return;
      }
      var label = kind === 'compound' ? data.compound_names[index] + ' (' + data.compounds[index] + '; annotated: ' +
        (data.compound_targets[index] || 'none') + ')' : data.genes[index];
      var blocks = {}, order = [];
      Object.keys(data.feature_sets).forEach(function (fs) {
        data.feature_sets[fs].forEach(function (condition) {
          var rows = rankedRows(condition, kind, index);
          if (!rows) { return; }
          if (!(condition.label in blocks)) { blocks[condition.label] = []; order.push(condition.label); }
          blocks[condition.label].push(table(fs, rows, top, kind));
        });
      });
      message.textContent = (kind === 'compound' ? 'Genes ranked for compound ' : 'Compounds ranked for gene ') + label +
        (order.length ? '' : ': no condition of this run holds partners to rank');
      results.innerHTML = order.map(function (label) {
        return '<h4>' + escapeHtml(label) + '</h4><div class="lookup-row">' + blocks[label].join('') + '</div>';
      }).join('');
      results.querySelectorAll('table.sortable').forEach(makeSortable);
    }

    document.getElementById('lookup-form').addEventListener('submit', function (event) {
      event.preventDefault();
      lookUp(document.getElementById('lookup-input').value);
    });
  }

  window.addEventListener('DOMContentLoaded', function () {
    document.querySelectorAll('table.sortable').forEach(makeSortable);
    setUp();
  });
})();
