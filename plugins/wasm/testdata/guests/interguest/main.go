// Command interguest reads the FHIR interactions property for the host's
// tests, without asking for the request body: X-Test "raw" puts the raw
// value (hex) or the error code in the request header X-Interactions;
// "sdk" puts the SDK's reading of it, as JSON; "body" tries body_get.
package main

import (
	"encoding/hex"
	"encoding/json"
	"strconv"

	"github.com/omnigate/omnigate/sdk/wasm"
	"github.com/omnigate/omnigate/sdk/wasm/abi"
)

func init() {
	wasm.OnRequest(func(r *wasm.Request) {
		switch r.Header.Get("X-Test") {
		case "raw":
			v, code := rawGet(abi.PropFHIRInteractions)
			if code < 0 {
				r.Header.Set("X-Interactions", "code "+strconv.Itoa(int(code)))
				return
			}
			r.Header.Set("X-Interactions", hex.EncodeToString(v))
		case "sdk":
			list, err := r.Interactions()
			if err != nil {
				r.Header.Set("X-Interactions", "error "+err.Error())
				return
			}
			b, _ := json.Marshal(list)
			r.Header.Set("X-Interactions", string(b))
		case "body":
			if _, err := r.Body(); err != nil {
				r.Header.Set("X-Body", err.Error())
			}
		}
	})
}

func main() {}
