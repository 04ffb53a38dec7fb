// Typesets the formulas that pymdownx.arithmatex (generic mode) leaves as \( ... \) and \[ ... \], with the
// KaTeX files this site serves itself (docs/assets/katex), so pages render offline. Material's document$
// fires on every page load, including instant navigation.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true }
    ],
    throwOnError: false
  });
});
