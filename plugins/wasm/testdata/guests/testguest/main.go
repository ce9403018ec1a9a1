// Command testguest misbehaves on request, for the host's failure tests:
// the X-Test header says how.
package main

import (
	"strconv"

	"github.com/omnigate/omnigate/sdk/wasm"
)

var keep [][]byte

func init() {
	wasm.OnRequest(func(r *wasm.Request) {
		switch r.Header.Get("X-Test") {
		case "panic":
			panic("testguest panics")
		case "trap":
			var p *[4]int
			_ = p[1] // nil dereference
		case "loop":
			for {
			}
		case "membomb":
			for {
				keep = append(keep, make([]byte, 1<<20))
			}
		case "deadlock":
			select {}
		case "hold": // holds its instance while the host's KV answers "hold"
			wasm.KV.Get("hold")
		case "print":
			println("to stderr from the guest")
		case "echo":
			r.Header.Set("X-Seen-Method", r.Method())
			r.Header.Set("X-Seen-Path", r.Path())
			r.Header.Set("X-Seen-Route", r.Route())
			if id := r.Identity(); id != nil {
				r.Header.Set("X-Seen-User", id.User+"/"+id.Role)
			}
			if f, ok := r.FHIR(); ok {
				r.Header.Set("X-Seen-FHIR", f.Interaction+" "+f.Type+" "+f.ID+" "+f.CompartmentType+"/"+f.CompartmentID)
			}
			n, _ := wasm.KV.Incr("hits", 1, 0)
			r.Header.Set("X-Hits", strconv.FormatInt(n, 10))
			wasm.Infof("echo %s", r.Path())
			wasm.Count("echoes", 1)
		case "respond":
			r.Respond(202, []byte("accepted locally"), "X-Local", "yes")
		case "huge": // a reply over the host's limit: X-Size bytes, default 5MiB
			n := 5 << 20
			if v, err := strconv.Atoi(r.Header.Get("X-Size")); err == nil {
				n = v
			}
			r.Respond(200, make([]byte, n))
		case "now": // a host call, which the test may make block
			r.Header.Set("X-Now", strconv.FormatInt(wasm.Now().Unix(), 10))
		case "spam": // 100 log lines, half through the log function
			for i := 0; i < 50; i++ {
				wasm.Infof("spam %d", i)
				println("spam", i)
			}
		case "unless-healed": // traps while the KV holds "broken"
			if _, broken, _ := wasm.KV.Get("broken"); broken {
				panic("testguest is broken")
			}
		}
	})
}

func main() {}
