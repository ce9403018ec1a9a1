package loadgen

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestGoClient(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/err" {
			w.WriteHeader(500)
		}
	}))
	defer ts.Close()
	res, err := Run(context.Background(), Options{URL: ts.URL, Tool: "go", Connections: 4, Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.Errors != 0 || res.RPS <= 0 || res.P50 <= 0 || res.P99 < res.P50 {
		t.Errorf("result %+v", res)
	}
	res, err = Run(context.Background(), Options{URL: ts.URL + "/err", Tool: "go", Connections: 2, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors == 0 || res.Errors != res.Requests {
		t.Errorf("500s not counted as errors: %+v", res)
	}
}

func TestParseWrk(t *testing.T) {
	out := `Running 10s test @ http://127.0.0.1:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.38ms  612.33us  18.20ms   83.12%
    Req/Sec    18.40k     1.21k   21.36k    71.50%
  Latency Distribution
     50%    1.27ms
     75%    1.59ms
     90%    1.98ms
     99%    3.61ms
  366201 requests in 10.00s, 150.19MB read
  Non-2xx or 3xx responses: 12
  Socket errors: connect 0, read 3, write 0, timeout 1
Requests/sec:  36611.46
Transfer/sec:     15.02MB
`
	res, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if res.RPS != 36611.46 || res.Requests != 366201 || res.Elapsed != 10*time.Second ||
		res.P50 != 1270*time.Microsecond || res.P99 != 3610*time.Microsecond || res.Errors != 16 {
		t.Errorf("parsed %+v", res)
	}
	if _, err := parseWrk("garbage"); err == nil {
		t.Error("garbage parsed")
	}
}

func TestWrkWhenInstalled(t *testing.T) {
	if !WrkAvailable() {
		t.Skip("wrk not installed (apt-get install wrk); the Go client is tested above")
	}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ts.Close()
	res, err := Run(context.Background(), Options{URL: ts.URL, Tool: "wrk", Connections: 2, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.RPS <= 0 || res.P50 <= 0 {
		t.Errorf("result %+v", res)
	}
}
