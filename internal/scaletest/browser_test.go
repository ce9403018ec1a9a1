package scaletest

import (
	"context"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/procgroup"
)

// chromium finds a headless-capable Chromium.
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// runChromium runs headless Chromium on the page with a fresh profile and
// no network services, and returns its standard output.
func runChromium(t *testing.T, bin, page string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}
	cmd := exec.CommandContext(ctx, bin, append(append(base, args...), "file://"+page)...)
	cmd.SysProcAttr = procgroup.Attr()
	cmd.Cancel = func() error { return procgroup.Signal(cmd.Process.Pid, 9) }
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v", args, err)
	}
	return out
}

// TestReportInBrowser opens the HTML report in headless Chromium and checks
// that the browser laid out every chart with its data: the page's own
// script records each SVG's size and drawn series, and a screenshot must
// show the charts' colors.
func TestReportInBrowser(t *testing.T) {
	bin := chromium()
	if bin == "" {
		if os.Getenv("OMNIGATE_BROWSER_TEST") == "1" {
			t.Fatal("Chromium is required (OMNIGATE_BROWSER_TEST=1): apt-get install -y chromium")
		}
		t.Skip("Chromium not found: the report's browser test is skipped. Install it (Debian: apt-get install -y chromium) " +
			"and run: go test -run TestReportInBrowser ./internal/scaletest/ (.ci/run installs it and runs this test)")
	}
	r := analyze(fakeRun())
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	f, err := os.Create(page)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.HTML(f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	dom := string(runChromium(t, bin, page, "--dump-dom"))
	m := regexp.MustCompile(`data-charts-rendered="(\d+)"`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("the page's script did not run:\n%.2000s", dom)
	}
	if n, _ := strconv.Atoi(m[1]); n != 8 {
		t.Errorf("%s of 8 charts rendered with data", m[1])
	}
	for _, d := range regexp.MustCompile(`data-rendered="(\d+)x(\d+):(\d+)"`).FindAllStringSubmatch(dom, -1) {
		w, _ := strconv.Atoi(d[1])
		h, _ := strconv.Atoi(d[2])
		if w < 300 || h < 150 {
			t.Errorf("a chart laid out at %dx%d", w, h)
		}
	}

	shot := filepath.Join(dir, "shot.png")
	runChromium(t, bin, page, "--window-size=1000,2600", "--screenshot="+shot, "--hide-scrollbars")
	sf, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	img, err := png.Decode(sf)
	if err != nil {
		t.Fatal(err)
	}
	// The series colors must be on screen: blue lines and bars, the
	// outage band.
	want := map[string][3]uint8{"series blue": {0x1f, 0x77, 0xb4}, "series orange": {0xff, 0x7f, 0x0e}, "outage band": {0xf9, 0xd8, 0xd8}}
	for name, c := range want {
		if n := countNear(img, c, 12); n < 50 {
			t.Errorf("%s: %d pixels on the screenshot", name, n)
		}
	}
}

func countNear(img image.Image, c [3]uint8, tol int) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if abs(int(r>>8)-int(c[0])) <= tol && abs(int(g>>8)-int(c[1])) <= tol && abs(int(bl>>8)-int(c[2])) <= tol {
				n++
			}
		}
	}
	return n
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
