package cache

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"

	_ "github.com/omnigate/omnigate/builtin/fhir" // the embedded FHIR server
)

// compressCacheMaxBody is the cache's max_body in TestCompressionThroughCache:
// bodies above it are streamed past the cache, not stored.
const compressCacheMaxBody = 16 << 10

// wireClient sends requests as a client that asks for what it wants and
// decodes nothing itself: DisableCompression keeps the transport from
// adding Accept-Encoding and from decoding, so the test sees the bytes
// on the wire.
var wireClient = &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 30 * time.Second}

// streamingOrigin is an upstream whose bodies are made of chunks flushed
// one by one (no Content-Length), or, with ?sized, written with a
// Content-Length in one write, as a FHIR server writes them.
func streamingOrigin(t *testing.T) (*httptest.Server, map[string][]byte) {
	bodies := map[string][]byte{
		"small": jsonBody("small", 4<<10),
		"large": jsonBody("large", 200<<10),
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		body, ok := bodies[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Has("sized") {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
			return
		}
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 3000)
			w.Write(rest[:n])
			w.(http.Flusher).Flush()
			rest = rest[n:]
		}
	}))
	t.Cleanup(up.Close)
	return up, bodies
}

// jsonBody is a compressible JSON document of about n bytes.
func jsonBody(name string, n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"name":"` + name + `","items":[`)
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"i":%d,"text":"item %d of %s"}`, i, i, name)
	}
	b.WriteString("]}")
	return b.Bytes()
}

// startCompressGateway serves on loopback a gateway with the embedded FHIR
// server and the upstream up, both behind the "as" plugin and the cache,
// with compression on or off on both routes.
func startCompressGateway(t *testing.T, up string, compress bool) string {
	t.Helper()
	text := fmt.Sprintf(`
listen: 127.0.0.1:0
admin: "off"
fhir:
  store: {path: ":memory:"}
plugins:
  as: {type: as}
  cache:
    type: cache
    max_body: %d
routes:
  - name: fhir
    fhir: true
    compress: %t
    plugins: [as, cache]
  - name: up
    path: /up/*rest
    upstream: %s
    compress: %t
    plugins: [as, cache]
`, compressCacheMaxBody, compress, up, compress)
	cfg, err := gateway.Parse("compress.yaml", []byte(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return "http://" + srv.Addr()
}

// seedFHIR writes a small and a large Patient through the gateway.
func seedFHIR(t *testing.T, base string) {
	t.Helper()
	small := map[string]any{"resourceType": "Patient", "id": "small", "name": []any{map[string]any{"family": "Small", "given": []string{strings.Repeat("a", 1500)}}}}
	var ids []any
	for i := range 800 {
		ids = append(ids, map[string]any{"system": "urn:test:ids", "value": fmt.Sprintf("identifier-%05d", i)})
	}
	large := map[string]any{"resourceType": "Patient", "id": "large", "identifier": ids}
	for _, p := range []map[string]any{small, large} {
		b, _ := json.Marshal(p)
		req, _ := http.NewRequest("PUT", base+"/fhir/R4/Patient/"+p["id"].(string), bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/fhir+json")
		req.Header.Set("X-Test-User", "seeder")
		res, err := wireClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 201 && res.StatusCode != 200 {
			t.Fatalf("seed %s: %d", p["id"], res.StatusCode)
		}
	}
}

// wireResponse is what a client received, its body decoded by hand.
type wireResponse struct {
	status  int
	header  http.Header
	wire    []byte // as received (after de-chunking)
	decoded []byte
}

// fetch sends one request and decodes the body per its Content-Encoding,
// failing the test when the response is not what it says it is.
func fetch(t *testing.T, method, url string, hdr http.Header) *wireResponse {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := wireClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	wire, err := io.ReadAll(res.Body) // the transport checks Content-Length
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	out := &wireResponse{status: res.StatusCode, header: res.Header, wire: wire, decoded: wire}
	if cl := res.Header.Get("Content-Length"); cl != "" && method != http.MethodHead && cl != strconv.Itoa(len(wire)) {
		t.Errorf("%s %s: Content-Length %s, %d bytes on the wire", method, url, cl, len(wire))
	}
	switch ce := res.Header.Get("Content-Encoding"); ce {
	case "":
	case "gzip":
		if method == http.MethodHead {
			break
		}
		zr, err := gzip.NewReader(bytes.NewReader(wire))
		if err != nil {
			t.Fatalf("%s %s: labelled gzip but not gzip (%v): %.40q", method, url, err, wire)
		}
		if out.decoded, err = io.ReadAll(zr); err != nil {
			t.Fatalf("%s %s: corrupt gzip: %v", method, url, err)
		}
	default:
		t.Fatalf("%s %s: unexpected Content-Encoding %q", method, url, ce)
	}
	return out
}

// normalizeBundle drops what differs between two answers to the same
// search or history: the Bundle's own id and timestamp.
func normalizeBundle(b []byte) []byte {
	var m map[string]any
	if json.Unmarshal(b, &m) != nil || m["resourceType"] != "Bundle" {
		return b
	}
	delete(m, "id")
	delete(m, "meta")
	out, _ := json.Marshal(m)
	return out
}

// TestCompressionThroughCache checks what a real client receives on every
// combination of route compression, Accept-Encoding, cache outcome (hit,
// miss, bypass by no-store, by unverified credentials and by size), body
// size, origin (the embedded FHIR server; an upstream streaming flushed
// chunks; an upstream sending a Content-Length in one write) and method:
// the body decodes per Content-Encoding to the origin's body,
// Content-Length matches, compressed when it should be, Vary:
// Accept-Encoding on compressed routes, and HEAD carries the GET's
// headers without a body.
func TestCompressionThroughCache(t *testing.T) {
	up, upBodies := streamingOrigin(t)
	type origin struct {
		name, path string
		bundle     bool
		want       []byte // nil: the embedded server's own answer, read first
		size       int    // filled in once want is known
	}
	var users atomic.Int64
	for _, compress := range []bool{true, false} {
		t.Run("compress="+strconv.FormatBool(compress), func(t *testing.T) {
			base := startCompressGateway(t, up.URL, compress)
			seedFHIR(t, base)
			origins := []*origin{
				{name: "fhir-small", path: "/fhir/R4/Patient/small"},
				{name: "fhir-large", path: "/fhir/R4/Patient/large"},
				{name: "fhir-history", path: "/fhir/R4/_history?_count=1000", bundle: true},
				{name: "stream-small", path: "/up/small", want: upBodies["small"]},
				{name: "stream-large", path: "/up/large", want: upBodies["large"]},
				{name: "sized-small", path: "/up/small?sized=1", want: upBodies["small"]},
				{name: "sized-large", path: "/up/large?sized=1", want: upBodies["large"]},
			}
			for _, o := range origins {
				if o.want == nil {
					// The origin's answer, past the cache and the compressor.
					r := fetch(t, "GET", base+o.path, http.Header{"Cache-Control": {"no-store"}, "X-Test-User": {"origin"}})
					if r.status != 200 || r.header.Get("Content-Encoding") != "" {
						t.Fatalf("%s: origin answered %d %v", o.name, r.status, r.header)
					}
					o.want = r.wire
				}
				o.size = len(o.want)
				if o.name == "fhir-small" || o.name == "sized-small" {
					if o.size <= 1<<10 || o.size > compressCacheMaxBody {
						t.Fatalf("%s: %d bytes; want a compressible body under the cache's max_body", o.name, o.size)
					}
				}
				if strings.HasSuffix(o.name, "large") || o.bundle {
					if o.size <= compressCacheMaxBody {
						t.Fatalf("%s: %d bytes; want more than the cache's max_body", o.name, o.size)
					}
				}
			}
			for _, o := range origins {
				large := o.size > compressCacheMaxBody
				for _, ae := range []string{"gzip", ""} {
					for _, mode := range []string{"miss", "hit", "no-store", "credentials"} {
						for _, method := range []string{"GET", "HEAD"} {
							name := fmt.Sprintf("%s/ae=%s/%s/%s", o.name, ae, mode, method)
							t.Run(name, func(t *testing.T) {
								hdr := http.Header{}
								if ae != "" {
									hdr.Set("Accept-Encoding", ae)
								}
								user := "u" + strconv.FormatInt(users.Add(1), 10)
								wantCache := "MISS"
								switch mode {
								case "miss":
									hdr.Set("X-Test-User", user)
								case "hit":
									hdr.Set("X-Test-User", user)
									// Stored by a client that asked for the other encoding.
									other := http.Header{"X-Test-User": {user}}
									if ae == "" {
										other.Set("Accept-Encoding", "gzip")
									}
									fetch(t, "GET", base+o.path, other)
									wantCache = "HIT"
								case "no-store":
									hdr.Set("X-Test-User", user)
									hdr.Set("Cache-Control", "no-store")
									wantCache = "BYPASS"
								case "credentials":
									// Credentials that no plugin checked: never shared.
									hdr.Set("Authorization", "Bearer unchecked")
									wantCache = "BYPASS"
								}
								if large && mode == "hit" {
									wantCache = "MISS" // over max_body: never stored
								}
								r := fetch(t, method, base+o.path, hdr)
								if r.status != 200 {
									t.Fatalf("status %d %v", r.status, r.header)
								}
								if got := r.header.Get("X-Cache"); got != wantCache {
									t.Errorf("X-Cache %q, want %q", got, wantCache)
								}
								if compress && !strings.Contains(strings.Join(r.header.Values("Vary"), ","), "Accept-Encoding") {
									t.Errorf("no Vary: Accept-Encoding: %v", r.header)
								}
								ce := r.header.Get("Content-Encoding")
								if method == "HEAD" {
									// HEAD describes the identity representation.
									if len(r.wire) != 0 || ce != "" {
										t.Errorf("HEAD: %d bytes, Content-Encoding %q", len(r.wire), ce)
									}
									if cl := r.header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(o.size) {
										t.Errorf("HEAD: Content-Length %s, the body has %d bytes", cl, o.size)
									}
									return
								}
								wantGzip := compress && ae == "gzip"
								if (ce == "gzip") != wantGzip {
									t.Errorf("Content-Encoding %q (compress %t, Accept-Encoding %q)", ce, compress, ae)
								}
								got, want := r.decoded, o.want
								if o.bundle {
									got, want = normalizeBundle(got), normalizeBundle(want)
								}
								if !bytes.Equal(got, want) {
									t.Errorf("decoded body (%d bytes) differs from the origin's (%d bytes): %.80q", len(got), len(want), got)
								}
							})
						}
					}
				}
			}
		})
	}
}
