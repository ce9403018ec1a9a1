package scaletest

import (
	"fmt"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/builtin/cache"
)

// clockSlack covers the time between the probe's acknowledgement and the
// cache's own reading of its clock for the entry it serves.
const clockSlack = 25 * time.Millisecond

// outageStalenessBound reads the fleet's config file and returns how long
// after a write made on another instance while Redis is down an instance
// may still start serving the old version: the largest, over its cache
// plugins, of outage_max_age and (with L1 on) l1.ttl, plus clockSlack.
// Without a cache plugin it is 0.
func outageStalenessBound(path string) (time.Duration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var doc struct {
		Plugins map[string]yaml.Node `yaml:"plugins"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	var bound time.Duration
	for name, node := range doc.Plugins {
		var head struct {
			Type string `yaml:"type"`
		}
		if node.Decode(&head) != nil || head.Type != "cache" {
			continue
		}
		c := cache.Defaults()
		if err := node.Decode(c); err != nil {
			return 0, fmt.Errorf("%s: plugin %s: %w", path, name, err)
		}
		b := c.OutageMaxAge
		if c.OnRedisDown == "bypass" {
			b = 0
		}
		if c.L1.Enabled {
			b = max(b, c.L1.TTL)
		}
		bound = max(bound, b+clockSlack)
	}
	return bound, nil
}
