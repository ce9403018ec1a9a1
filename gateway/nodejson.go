package gateway

import (
	"encoding/json"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// NodeJSON converts a plugin's YAML config node to JSON, for plugin types
// that hand a "config" key on to plugin code (a Wasm guest, an external
// process) as JSON. An absent node (the zero Node) is "null".
func NodeJSON(n *yaml.Node) ([]byte, error) {
	if n == nil || n.Kind == 0 {
		return []byte("null"), nil
	}
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot be given as JSON: %w", err)
	}
	return b, nil
}
