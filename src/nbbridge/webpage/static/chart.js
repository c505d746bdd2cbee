// A live line chart, one line per series, newest point on the right; shared by the hub's
// /stats page and the client's status page. Plain SVG, no libraries; text goes in with
// textContent only.
//
//   var chart = nbbLiveChart(chartElement, legendElement, { format: perSecond });
//   chart.push({ "jupyter": 1200, "ssh": 0 });   // once per refresh
//
// A series missing from a push gets 0; one that stays at 0 for the whole window is dropped.
window.nbbLiveChart = function (box, legend, options) {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var POINTS = options.points || 60;
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  var format = options.format || String;
  var label = options.label || function (key) { return key; };
  var history = {};  // series key -> [value, ...], newest last
  var colorOf = {};
  var nextColor = 0;

  function add(key, value) {
    var points = history[key] || (history[key] = []);
    points.push(value);
    if (points.length > POINTS) { points.shift(); }
  }

  function svgNode(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function draw() {
    var width = 720, height = 180, pad = 40;
    var max = 1;
    Object.keys(history).forEach(function (key) {
      max = Math.max(max, Math.max.apply(null, history[key]));
    });
    var svg = svgNode("svg", { width: width, height: height, role: "img",
                               viewBox: "0 0 " + width + " " + height });
    var axis = svgNode("text", { x: 4, y: 14, "font-size": "11" });
    axis.textContent = format(max);
    svg.appendChild(axis);
    svg.appendChild(svgNode("line", { x1: pad, x2: width - 4, y1: height - 4, y2: height - 4,
                                      stroke: "#999" }));
    var items = [];
    Object.keys(history).forEach(function (key) {
      var points = history[key];
      var step = (width - pad - 4) / (POINTS - 1);
      var offset = POINTS - points.length;
      var coords = points.map(function (v, i) {
        var x = pad + (offset + i) * step;
        var y = height - 4 - (v / max) * (height - 24);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      svg.appendChild(svgNode("polyline", { points: coords.join(" "), fill: "none",
                                            stroke: colorOf[key], "stroke-width": "2",
                                            "data-series": key }));
      // The newest point gets a dot, so a series shows from its first figure on.
      var last = coords[coords.length - 1].split(",");
      svg.appendChild(svgNode("circle", { cx: last[0], cy: last[1], r: "3",
                                          fill: colorOf[key] }));
      var item = document.createElement("li");
      item.setAttribute("data-series", key);
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colorOf[key];
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(label(key) + " " +
                                               format(points[points.length - 1])));
      items.push(item);
    });
    box.replaceChildren(svg);
    legend.replaceChildren.apply(legend, items);
  }

  return {
    push: function (values) {
      Object.keys(values).forEach(function (key) {
        if (!(key in colorOf)) { colorOf[key] = COLORS[nextColor++ % COLORS.length]; }
        add(key, values[key]);
      });
      Object.keys(history).forEach(function (key) {
        if (!(key in values)) {
          add(key, 0);
          if (Math.max.apply(null, history[key]) === 0) { delete history[key]; }
        }
      });
      draw();
    }
  };
};
