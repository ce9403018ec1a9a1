package ratelimit

import (
	"os"
	"testing"

	"github.com/omnigate/omnigate/gateway"
)

// TestShippedConfigs checks that the configs shipped with the limiter in
// them are accepted.
func TestShippedConfigs(t *testing.T) {
	for _, file := range []string{"../../examples/configs/ratelimit.yaml", "../../cmd/omnigate/default.yaml"} {
		t.Run(file, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := gateway.Parse(file, data, nil)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, p := range cfg.Plugins {
				found = found || p.Type == "ratelimit"
			}
			if !found {
				t.Fatal("no ratelimit plugin")
			}
		})
	}
}
