// Command loadtest serves a FHIR store for loopback load tests with wrk,
// side by side with a bare handler that serves one stored resource's bytes:
// the gateway (with its fhir route and no plugins) on -gateway, the bare
// httprouter handler on -bare. docs/BENCHMARKS.md has the commands.
//
//	go run ./builtin/fhir/internal/loadtest -store /tmp/bench.db -examples ../shared/fhir-r4/examples
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"

	"github.com/julienschmidt/httprouter"

	_ "github.com/omnigate/omnigate/builtin/fhir"
	"github.com/omnigate/omnigate/gateway"
)

func main() {
	storePath := flag.String("store", "/tmp/omnigate-loadtest.db", "store file")
	gatewayAddr := flag.String("gateway", "127.0.0.1:18080", "gateway listen address")
	bareAddr := flag.String("bare", "127.0.0.1:18081", "bare handler listen address")
	examples := flag.String("examples", "../shared/fhir-r4/examples", "folder of the Synthea Bundles, loaded when the store has no Patient/85")
	accessLog := flag.Bool("access-log", false, "write the gateway's access log (to /dev/null)")
	read := flag.String("read", "Patient/85", "the resource the bare handler serves")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	yaml := fmt.Sprintf("listen: %q\nadmin: \"off\"\nlog: {access_log: %v}\nfhir:\n  store: {path: %q}\nroutes:\n  - name: fhir\n    fhir: true\n",
		*gatewayAddr, *accessLog, *storePath)
	cfg, err := gateway.Parse("loadtest.yaml", []byte(yaml), nil)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	srv, err := gateway.New(ctx, cfg, gateway.Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		log.Fatal(err)
	}
	get := func(path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, httptest.NewRequest("GET", "http://"+*gatewayAddr+path, nil))
		return w
	}
	if get("/fhir/R4/Patient/85").Code == http.StatusNotFound {
		for _, f := range []string{"uscore_bundle_patient_85.json", "uscore_bundle_patient_355.json", "carin_bundle_patient_888.json"} {
			data, err := os.ReadFile(filepath.Join(*examples, f))
			if err != nil {
				log.Fatal(err)
			}
			w := httptest.NewRecorder()
			r := httptest.NewRequest("POST", "http://"+*gatewayAddr+"/fhir/R4", bytes.NewReader(data))
			r.Header.Set("Content-Type", "application/fhir+json")
			srv.ServeHTTP(w, r)
			if w.Code != 200 {
				log.Fatalf("load %s: %d %s", f, w.Code, w.Body)
			}
		}
	}
	res := get("/fhir/R4/" + *read)
	if res.Code != 200 {
		log.Fatalf("read %s: %d", *read, res.Code)
	}
	body := res.Body.Bytes()
	etag := res.Header().Get("ETag")
	router := httprouter.New()
	router.GET("/fhir/R4/:type/:id", func(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
		h := w.Header()
		h.Set("Content-Type", "application/fhir+json; charset=utf-8")
		h.Set("ETag", etag)
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	bare := &http.Server{Addr: *bareAddr, Handler: router}
	go func() {
		if err := bare.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("gateway http://%s/fhir/R4 (store %s), bare http://%s/fhir/R4/%s (%d bytes)\n", *gatewayAddr, *storePath, *bareAddr, *read, len(body))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	srv.Shutdown(ctx)
	bare.Close()
}
