package scaletest

import (
	"fmt"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/builtin/cache"
)

// probeResolution is the most a probe's measured delay exceeds the time a
// fresh read became possible: the pause between its reads (at most 50 ms)
// and a request's own time.
const probeResolution = 100 * time.Millisecond

// outageStalenessBound reads the fleet's config file and returns the most
// a read may lag a write made on another instance while Redis is down: the
// largest, over its cache plugins, of outage_max_age and (with L1 on)
// l1.ttl, plus probeResolution. Without a cache plugin it is 0.
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
		bound = max(bound, b+probeResolution)
	}
	return bound, nil
}
