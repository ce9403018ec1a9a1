// Package svgchart draws small line and bar charts as standalone SVG
// markup, for reports that must open without network access: no scripts,
// no fonts or styles fetched from elsewhere.
package svgchart

import (
	"cmp"
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// Palette is the series colors, in order.
var Palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

// Series is one line: points (X[i], Y[i]).
type Series struct {
	Name string
	X, Y []float64
	// Color, default from Palette by position.
	Color string
	// Dashed draws the line dashed.
	Dashed bool
}

// Band shades the x range [From, To], e.g. an outage.
type Band struct {
	From, To float64
	Label    string
	// Color, default light red.
	Color string
}

// Line is a line chart.
type Line struct {
	// ID is the SVG element's id (optional).
	ID             string
	Title          string
	XLabel, YLabel string
	Series         []Series
	Bands          []Band
	// Width and Height in pixels. Default 760×300.
	Width, Height int
	// YMax fixes the top of the y axis; default from the data.
	YMax float64
}

// Bars is a grouped bar chart: one group per category, one bar per
// series in each group.
type Bars struct {
	ID         string
	Title      string
	YLabel     string
	Categories []string
	SeriesName []string
	// Values[s][c] is series s in category c.
	Values [][]float64
	// RefLine draws a horizontal line at this value (e.g. 1 for "the
	// limit") when RefLabel is set.
	RefLine  float64
	RefLabel string
	// Width and Height in pixels. Default 760×300.
	Width, Height int
	// YMax fixes the top of the y axis; default from the data.
	YMax float64
}

const (
	padL, padR, padT, padB = 64, 16, 34, 58
)

type canvas struct {
	b    strings.Builder
	w, h int
}

func newCanvas(id, title string, w, h int) *canvas {
	c := &canvas{w: w, h: h}
	idAttr := ""
	if id != "" {
		idAttr = ` id="` + html.EscapeString(id) + `"`
	}
	fmt.Fprintf(&c.b, `<svg class="chart"%s xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s" font-family="sans-serif" font-size="11">`,
		idAttr, w, h, w, h, html.EscapeString(title))
	fmt.Fprintf(&c.b, `<title>%s</title><rect x="0" y="0" width="%d" height="%d" fill="#fff"/>`, html.EscapeString(title), w, h)
	fmt.Fprintf(&c.b, `<text x="%d" y="18" font-size="13" font-weight="bold">%s</text>`, padL, html.EscapeString(title))
	return c
}

func (c *canvas) text(x, y float64, anchor, s string, extra string) {
	fmt.Fprintf(&c.b, `<text x="%.1f" y="%.1f" text-anchor="%s"%s>%s</text>`, x, y, anchor, extra, html.EscapeString(s))
}

func (c *canvas) end() string {
	c.b.WriteString(`</svg>`)
	return c.b.String()
}

// niceStep returns a step of 1, 2 or 5 × 10^k giving about n ticks over
// span.
func niceStep(span float64, n int) float64 {
	if span <= 0 || math.IsNaN(span) || math.IsInf(span, 0) {
		return 1
	}
	raw := span / float64(n)
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

// Format prints a tick value briefly: 1200 → 1.2k.
func Format(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	case a == 0:
		return "0"
	case a < 0.01:
		return strconv.FormatFloat(v, 'g', 2, 64)
	}
	return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
}

type frame struct {
	x0, x1, y0, y1 float64 // data ranges
	w, h           int
}

func (f frame) px(x float64) float64 {
	if f.x1 == f.x0 {
		return padL
	}
	return padL + (x-f.x0)/(f.x1-f.x0)*float64(f.w-padL-padR)
}

func (f frame) py(y float64) float64 {
	if f.y1 == f.y0 {
		return float64(f.h - padB)
	}
	return float64(f.h-padB) - (y-f.y0)/(f.y1-f.y0)*float64(f.h-padT-padB)
}

// yAxis draws horizontal grid lines and labels; it returns the rounded
// top of the axis.
func (c *canvas) yAxis(f *frame, label string) {
	step := niceStep(f.y1-f.y0, 5)
	f.y1 = math.Ceil(f.y1/step) * step
	if f.y1 == f.y0 {
		f.y1 = f.y0 + step
	}
	for v := f.y0; v <= f.y1+step/1e6; v += step {
		y := f.py(v)
		fmt.Fprintf(&c.b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e4e4e4"/>`, padL, y, f.w-padR, y)
		c.text(padL-6, y+4, "end", Format(v), "")
	}
	if label != "" {
		fmt.Fprintf(&c.b, `<text x="14" y="%d" text-anchor="middle" transform="rotate(-90 14 %d)">%s</text>`,
			(padT+f.h-padB)/2, (padT+f.h-padB)/2, html.EscapeString(label))
	}
	fmt.Fprintf(&c.b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>`, padL, f.h-padB, f.w-padR, f.h-padB)
	fmt.Fprintf(&c.b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>`, padL, padT, padL, f.h-padB)
}

func (c *canvas) legend(names, colors []string, dashed []bool, y float64) {
	x := float64(padL)
	for i, n := range names {
		dash := ""
		if dashed != nil && dashed[i] {
			dash = ` stroke-dasharray="4 3"`
		}
		fmt.Fprintf(&c.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"%s/>`, x, y-4, x+16, y-4, colors[i], dash)
		c.text(x+20, y, "start", n, "")
		x += 28 + 6.5*float64(len(n))
	}
}

func color(explicit string, i int) string {
	if explicit != "" {
		return explicit
	}
	return Palette[i%len(Palette)]
}

// SVG renders the chart.
func (l Line) SVG() string {
	l.Width, l.Height = cmp.Or(l.Width, 760), cmp.Or(l.Height, 300)
	c := newCanvas(l.ID, l.Title, l.Width, l.Height)
	f := frame{x0: math.Inf(1), x1: math.Inf(-1), y0: 0, y1: 0, w: l.Width, h: l.Height}
	for _, s := range l.Series {
		for i := range s.X {
			f.x0, f.x1 = math.Min(f.x0, s.X[i]), math.Max(f.x1, s.X[i])
			f.y1 = math.Max(f.y1, s.Y[i])
		}
	}
	if math.IsInf(f.x0, 0) {
		f.x0, f.x1 = 0, 1
	}
	if l.YMax > 0 {
		f.y1 = l.YMax
	}
	c.yAxis(&f, l.YLabel)
	for _, b := range l.Bands {
		x0, x1 := f.px(math.Max(b.From, f.x0)), f.px(math.Min(b.To, f.x1))
		fmt.Fprintf(&c.b, `<rect class="band" x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" fill-opacity="0.35"/>`,
			x0, padT, math.Max(x1-x0, 1), l.Height-padT-padB, cmp.Or(b.Color, "#f4a0a0"))
		c.text(x0+3, padT+12, "start", b.Label, ` fill="#a00"`)
	}
	step := niceStep(f.x1-f.x0, 8)
	for v := math.Ceil(f.x0/step) * step; v <= f.x1+step/1e6; v += step {
		x := f.px(v)
		fmt.Fprintf(&c.b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#888"/>`, x, l.Height-padB, x, l.Height-padB+4)
		c.text(x, float64(l.Height-padB+16), "middle", Format(v), "")
	}
	if l.XLabel != "" {
		c.text(float64(padL+(l.Width-padL-padR)/2), float64(l.Height-padB+30), "middle", l.XLabel, "")
	}
	var names, colors []string
	var dashed []bool
	for i, s := range l.Series {
		col := color(s.Color, i)
		names, colors, dashed = append(names, s.Name), append(colors, col), append(dashed, s.Dashed)
		if len(s.X) == 0 {
			continue
		}
		var pts strings.Builder
		for j := range s.X {
			fmt.Fprintf(&pts, "%.1f,%.1f ", f.px(s.X[j]), f.py(math.Min(s.Y[j], f.y1)))
		}
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="4 3"`
		}
		fmt.Fprintf(&c.b, `<polyline class="series" fill="none" stroke="%s" stroke-width="1.6"%s points="%s"/>`, col, dash, strings.TrimSpace(pts.String()))
	}
	c.legend(names, colors, dashed, float64(l.Height-8))
	return c.end()
}

// SVG renders the chart.
func (b Bars) SVG() string {
	b.Width, b.Height = cmp.Or(b.Width, 760), cmp.Or(b.Height, 300)
	c := newCanvas(b.ID, b.Title, b.Width, b.Height)
	f := frame{x0: 0, x1: 1, y0: 0, y1: 0, w: b.Width, h: b.Height}
	for _, vs := range b.Values {
		for _, v := range vs {
			f.y1 = math.Max(f.y1, v)
		}
	}
	if b.RefLabel != "" {
		f.y1 = math.Max(f.y1, b.RefLine)
	}
	if b.YMax > 0 {
		f.y1 = b.YMax
	}
	c.yAxis(&f, b.YLabel)
	nc, ns := len(b.Categories), len(b.Values)
	if nc > 0 && ns > 0 {
		groupW := float64(b.Width-padL-padR) / float64(nc)
		barW := groupW * 0.8 / float64(ns)
		for ci, cat := range b.Categories {
			gx := float64(padL) + groupW*float64(ci) + groupW*0.1
			for si := range b.Values {
				v := 0.0
				if ci < len(b.Values[si]) {
					v = b.Values[si][ci]
				}
				y := f.py(math.Min(v, f.y1))
				fmt.Fprintf(&c.b, `<rect class="series" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`,
					gx+barW*float64(si), y, math.Max(barW-1, 1), float64(b.Height-padB)-y, color("", si),
					html.EscapeString(cat), html.EscapeString(name(b.SeriesName, si)), Format(v))
			}
			c.text(gx+groupW*0.4, float64(b.Height-padB+16), "middle", cat, "")
		}
	}
	if b.RefLabel != "" {
		y := f.py(b.RefLine)
		fmt.Fprintf(&c.b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#a00" stroke-dasharray="6 3" stroke-width="1.5"/>`, padL, y, b.Width-padR, y)
		c.text(float64(b.Width-padR-4), y-4, "end", b.RefLabel, ` fill="#a00"`)
	}
	if ns > 1 || (ns == 1 && len(b.SeriesName) == 1) {
		colors := make([]string, ns)
		names := make([]string, ns)
		for i := range colors {
			colors[i], names[i] = color("", i), name(b.SeriesName, i)
		}
		c.legend(names, colors, nil, float64(b.Height-8))
	}
	return c.end()
}

func name(names []string, i int) string {
	if i < len(names) {
		return names[i]
	}
	return "series " + strconv.Itoa(i+1)
}
