package svgchart

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

// wellFormed parses the markup as XML, as a browser parses inline SVG.
func wellFormed(t *testing.T, svg string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := d.Token()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, svg)
		}
	}
}

func TestCharts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		svg   string
		wants []string
	}{
		{"line with a band", Line{ID: "x", Title: "Throughput <req/s>", XLabel: "s", YLabel: "req/s",
			Series: []Series{{Name: "a", X: []float64{0, 1, 2}, Y: []float64{5, 7, 3}}, {Name: "b & c", X: []float64{0, 2}, Y: []float64{1, 2}, Dashed: true}},
			Bands:  []Band{{From: 0.5, To: 1.5, Label: "outage"}}}.SVG(),
			[]string{`id="x"`, "Throughput &lt;req/s&gt;", `class="band"`, "b &amp; c", "stroke-dasharray", "<polyline"}},
		{"empty line", Line{Title: "nothing"}.SVG(), []string{"<svg", "nothing"}},
		{"bars with a reference line", Bars{Title: "accuracy", Categories: []string{"nurse", "patient"}, SeriesName: []string{"up", "outage"},
			Values: [][]float64{{1, 0.9}, {0.5, 2}}, RefLine: 1, RefLabel: "limit"}.SVG(),
			[]string{`class="series"`, "limit", "nurse", "patient"}},
		{"bars without data", Bars{Title: "none"}.SVG(), []string{"none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wellFormed(t, tc.svg)
			for _, w := range tc.wants {
				if !strings.Contains(tc.svg, w) {
					t.Errorf("missing %q in\n%s", w, tc.svg)
				}
			}
		})
	}
}

func TestNiceStepAndFormat(t *testing.T) {
	for _, tc := range []struct {
		span float64
		n    int
		want float64
	}{{100, 5, 20}, {7, 8, 1}, {0.3, 5, 0.1}, {0, 5, 1}, {2500, 5, 500}} {
		if got := niceStep(tc.span, tc.n); got != tc.want {
			t.Errorf("niceStep(%v, %d) = %v, want %v", tc.span, tc.n, got, tc.want)
		}
	}
	for v, want := range map[float64]string{0: "0", 1.5: "1.5", 12000: "12k", 2500000: "2.5M", 0.004: "0.004"} {
		if got := Format(v); got != want {
			t.Errorf("Format(%v) = %q, want %q", v, got, want)
		}
	}
}
