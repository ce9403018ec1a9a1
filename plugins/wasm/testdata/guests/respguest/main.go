// Command respguest exercises the request body and the response phase for
// the host's tests; the X-Test request header says what to do.
package main

import (
	"strconv"

	"github.com/omnigate/omnigate/sdk/wasm"
)

func init() {
	wasm.ReadRequestBody()
	wasm.OnRequest(func(r *wasm.Request) {
		switch r.Header.Get("X-Test") {
		case "skip":
			r.SkipResponse()
		case "body":
			b, err := r.Body()
			switch err {
			case nil:
				r.Header.Set("X-Body-Len", strconv.Itoa(len(b)))
			case wasm.ErrTooLarge:
				r.Header.Set("X-Body-Len", "too large")
			default:
				r.Header.Set("X-Body-Len", err.Error())
			}
		}
	})
	wasm.OnResponse(func(w *wasm.Response) {
		w.Header.Set("X-Module", "respguest")
		switch w.Request.Header.Get("X-Test") {
		case "mask":
			n, err := w.MaskFields([]string{"telecom", "address"}, `"***"`)
			w.Header.Set("X-Masked", strconv.Itoa(n))
			if err != nil {
				w.Header.Set("X-Mask-Error", err.Error())
			}
		case "setbody":
			w.SetBody([]byte("replaced"))
			w.SetStatus(203)
		case "deny":
			w.Deny(403, "not for you")
		case "status":
			w.Header.Set("X-Status", strconv.Itoa(w.Status()))
		case "body":
			b, err := w.Body()
			if err != nil {
				w.Header.Set("X-Resp-Body", err.Error())
			} else {
				w.Header.Set("X-Resp-Body", strconv.Itoa(len(b)))
			}
		case "panic":
			panic("respguest panics in the response phase")
		}
	})
}

func main() {}
