// Command interresp has a response handler only: it puts the SDK's reading
// of the FHIR interactions property, taken in the response phase, in the
// response header X-Interactions, for the host's tests.
package main

import (
	"encoding/json"

	"github.com/omnigate/omnigate/sdk/wasm"
)

func init() {
	wasm.OnResponse(func(w *wasm.Response) {
		list, err := w.Request.Interactions()
		if err != nil {
			w.Header.Set("X-Interactions", "error "+err.Error())
			return
		}
		b, _ := json.Marshal(list)
		w.Header.Set("X-Interactions", string(b))
	})
}

func main() {}
