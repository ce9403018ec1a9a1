package gateway

import (
	"bufio"
	"net"
	"net/http"

	"github.com/klauspost/compress/gzhttp"
)

// compressHandler wraps h in response compression (gzip, or zstd when the
// client prefers it) for clients that send Accept-Encoding. Responses of
// at least minSize bytes with a compressible content type are compressed;
// HEAD responses never are (they describe the identity representation).
// Every response gets Vary: Accept-Encoding.
func compressHandler(h http.Handler, minSize int) (http.Handler, error) {
	wrap, err := gzhttp.NewWrapper(gzhttp.MinSize(minSize))
	if err != nil {
		return nil, err
	}
	gz := wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&nonEmptyWriter{w}, r)
	}))
	// Most API clients send no Accept-Encoding: skip the wrapper (and its
	// allocations) for them, but keep the Vary that caches need.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Header["Accept-Encoding"]; ok {
			gz.ServeHTTP(w, r)
			return
		}
		if h := w.Header(); h["Vary"] == nil {
			h["Vary"] = varyAcceptEncoding // shared: full capacity, so an Add copies
		} else {
			h.Add("Vary", "Accept-Encoding")
		}
		h.ServeHTTP(w, r)
	}), nil
}

var varyAcceptEncoding = []string{"Accept-Encoding"}[:1:1]

// nonEmptyWriter drops empty writes before they reach the compressing
// writer. That writer, given an empty write while the response declares a
// Content-Length of at least the minimum size, labels the response
// Content-Encoding: gzip without starting the encoder, and then sends the
// body that follows uncompressed. Handlers and plugins that replay a
// buffered response (a cache that stopped buffering, a policy that passes
// a captured body on) make exactly such writes.
type nonEmptyWriter struct {
	http.ResponseWriter
}

func (w *nonEmptyWriter) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	return w.ResponseWriter.Write(b)
}

// Flush flushes the compressor and the connection.
func (w *nonEmptyWriter) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

// FlushError is Flush reporting its error (http.ResponseController).
func (w *nonEmptyWriter) FlushError() error {
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack passes upgraded connections through.
func (w *nonEmptyWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap returns the underlying writer for http.ResponseController.
func (w *nonEmptyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
