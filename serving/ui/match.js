/* Shared passages between two petition texts: greedy longest common substrings of at least `minLen` characters.
 * Pure functions, no DOM: window.XfMatch.sharedPassages(a, b) -> [{a: start, b: start, len}].
 */
(function (root) {
  "use strict";
  var WORD = /[\p{L}\p{N}]/u;

  function wordChars(s) {
    var n = 0;
    for (var ch of s) if (WORD.test(ch)) n++;
    return n;
  }

  function gramIndex(s, minLen, maxCandidates) {
    var grams = new Map();
    for (var j = 0; j + minLen <= s.length; j++) {
      var g = s.substr(j, minLen);
      var list = grams.get(g);
      if (!list) grams.set(g, (list = []));
      if (list.length < maxCandidates) list.push(j);
    }
    return grams;
  }

  /* Greedy left-to-right over x: at each position the longest match anywhere in y (via y's n-gram index). */
  function greedy(x, y, grams, minLen, skip) {
    var out = [], i = 0;
    // stop[i]: where the free run starting at i ends (passages of the second pass stay out of covered text).
    var stop = new Int32Array(x.length + 1);
    stop[x.length] = x.length;
    for (var p = x.length - 1; p >= 0; p--) stop[p] = skip && skip[p] ? p : stop[p + 1];
    while (i + minLen <= x.length) {
      var lim = stop[i];
      if (i + minLen > lim) { i++; continue; }
      var cands = grams.get(x.substr(i, minLen));
      var bestLen = 0, bestJ = -1;
      if (cands) {
        for (var c = 0; c < cands.length; c++) {
          var yj = cands[c], len = minLen;
          while (i + len < lim && yj + len < y.length && x[i + len] === y[yj + len]) len++;
          if (len > bestLen) { bestLen = len; bestJ = yj; }
        }
      }
      // A passage must carry words, not only punctuation and spaces.
      if (bestLen >= minLen && wordChars(x.substr(i, bestLen)) >= Math.min(3, minLen)) {
        out.push([i, bestJ, bestLen]);
        i += bestLen;
      } else {
        i++;
      }
    }
    return out;
  }

  /* Passages of >= minLen characters found in both texts. A second pass from b's side catches passages of b
   * that a's greedy pass consumed inside a longer match (e.g. a title repeated in the other body). */
  function sharedPassages(a, b, minLen, maxCandidates) {
    minLen = minLen || 4;
    maxCandidates = maxCandidates || 200;
    if (!a || !b || a.length < minLen || b.length < minLen) return [];
    var out = greedy(a, b, gramIndex(b, minLen, maxCandidates), minLen).map(function (m) {
      return { a: m[0], b: m[1], len: m[2] };
    });
    var covered = new Uint8Array(b.length);
    out.forEach(function (m) { covered.fill(1, m.b, m.b + m.len); });
    greedy(b, a, gramIndex(a, minLen, maxCandidates), minLen, covered).forEach(function (m) {
      out.push({ a: m[1], b: m[0], len: m[2] });
    });
    return out;
  }

  /* Intervals [start, end, id] of one side, merged where they overlap (the first id wins). */
  function intervals(matches, side) {
    var iv = matches.map(function (m, k) { return [m[side], m[side] + m.len, k]; });
    iv.sort(function (x, y) { return x[0] - y[0] || y[1] - x[1]; });
    var merged = [];
    iv.forEach(function (v) {
      var last = merged[merged.length - 1];
      if (last && v[0] < last[1]) { last[1] = Math.max(last[1], v[1]); } else { merged.push(v.slice()); }
    });
    return merged;
  }

  /* Pieces of text[start:end) as [{text, id|null}] given merged intervals over the whole text. */
  function pieces(text, merged, start, end) {
    var res = [], pos = start;
    merged.forEach(function (v) {
      var s = Math.max(v[0], start), e = Math.min(v[1], end);
      if (e <= s) return;
      if (s > pos) res.push({ text: text.slice(pos, s), id: null });
      res.push({ text: text.slice(s, e), id: v[2] });
      pos = e;
    });
    if (pos < end) res.push({ text: text.slice(pos, end), id: null });
    return res;
  }

  var api = { sharedPassages: sharedPassages, intervals: intervals, pieces: pieces };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  root.XfMatch = api;
})(typeof window !== "undefined" ? window : globalThis);
