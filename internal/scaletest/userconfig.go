package scaletest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/builtin/authz"
)

// The user's omnigate.yaml (Options.Config) becomes the fleet's config and
// the FHIR server's: its plugins, routes and settings are kept, and only
// what running a fleet on loopback needs is changed:
//
//   - listen and admin: loopback, set per instance (an admin token is
//     dropped, so that the tool can read /ping and /metrics);
//   - redis: the tool's Redis, keeping the user's timeouts, backoff and
//     key prefix; cache_redis is dropped (the cache shares it);
//   - fhir: moved to the FHIR server's own config (its store a new file
//     in the run's folder); every "fhir: true" route of the fleet becomes
//     an upstream route to that server with fhir_errors;
//   - session plugins: the generated user directory;
//   - authz plugins: the probe role may read and write everything;
//   - audit plugins: no fhir sink (the instances have no embedded FHIR
//     server); a JSON lines file per instance when no other sink is left;
//   - ratelimit plugins: the probe role with a limit it never reaches (and,
//     for those counting per client IP, every request).

// loadUserConfig parses Options.Config.
func loadUserConfig(path string) (*yaml.Node, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: not a mapping", path)
	}
	return doc.Content[0], nil
}

// userFHIR takes the fhir section out of root, with its store moved into
// dir, and returns it with the FHIR base path.
func userFHIR(root *yaml.Node, dir string) (*yaml.Node, string) {
	fhirNode := mapGet(root, "fhir")
	mapDel(root, "fhir")
	if fhirNode == nil || fhirNode.Kind != yaml.MappingNode {
		fhirNode = &yaml.Node{Kind: yaml.MappingNode}
	}
	base := "/fhir/R4"
	if b := mapGet(fhirNode, "base_path"); b != nil && b.Value != "" {
		base = strings.TrimSuffix(b.Value, "/")
	}
	store := mapGet(fhirNode, "store")
	if store == nil || store.Kind != yaml.MappingNode {
		store = &yaml.Node{Kind: yaml.MappingNode}
		mapSet(fhirNode, "store", store)
	}
	mapSet(store, "path", scalar(filepath.Join(dir, "fhir.db")))
	return fhirNode, base
}

// userBase is the FHIR base path of the user's config.
func userBase(o *Options) (string, error) {
	root, err := loadUserConfig(o.Config)
	if err != nil {
		return "", err
	}
	_, base := userFHIR(root, "")
	return base, nil
}

// userOrigin writes the FHIR server's config from the user's fhir
// section and returns its path and the FHIR base path.
func userOrigin(o *Options, dir string) (string, string, error) {
	root, err := loadUserConfig(o.Config)
	if err != nil {
		return "", "", err
	}
	fhirNode, base := userFHIR(root, dir)
	doc := &yaml.Node{Kind: yaml.MappingNode}
	mapSet(doc, "listen", scalar("127.0.0.1:8080"))
	mapSet(doc, "admin", scalar("127.0.0.1:9090"))
	logs, _ := snippet("level: warn\naccess_log: false\n")
	mapSet(doc, "log", logs)
	mapSet(doc, "fhir", fhirNode)
	routes, _ := snippet("routes: [{name: fhir, fhir: true}]\n")
	mapSet(doc, "routes", mapGet(routes, "routes"))
	out, err := yaml.Marshal(doc)
	if err != nil {
		return "", "", err
	}
	path := filepath.Join(dir, "fhir-origin.yaml")
	return path, base, os.WriteFile(path, out, 0o600)
}

// userFleet writes the fleet's config from the user's and returns its
// path.
func userFleet(o *Options, dir, redisYAML, upstream string) (string, error) {
	root, err := loadUserConfig(o.Config)
	if err != nil {
		return "", err
	}
	mapSet(root, "listen", scalar("127.0.0.1:8080"))
	mapSet(root, "admin", scalar("127.0.0.1:9090"))
	mapDel(root, "cache_redis")
	redis := mapGet(root, "redis")
	if redis == nil || redis.Kind != yaml.MappingNode {
		redis = &yaml.Node{Kind: yaml.MappingNode}
	}
	for _, k := range []string{"url", "sentinel", "cluster", "username", "password", "db", "tls"} {
		mapDel(redis, k)
	}
	if redisYAML == "" {
		mapDel(root, "redis")
	} else {
		ours, err := snippet(redisYAML)
		if err != nil {
			return "", err
		}
		for i := 0; i+1 < len(ours.Content); i += 2 {
			mapSet(redis, ours.Content[i].Value, ours.Content[i+1])
		}
		mapSet(root, "redis", redis)
	}
	_, base := userFHIR(root, dir)
	fhirRoutes := 0
	if routes := mapGet(root, "routes"); routes != nil && routes.Kind == yaml.SequenceNode {
		for _, r := range routes.Content {
			if f := mapGet(r, "fhir"); r.Kind != yaml.MappingNode || f == nil || f.Value != "true" {
				continue
			}
			fhirRoutes++
			mapDel(r, "fhir")
			if mapGet(r, "path") == nil {
				mapSet(r, "path", scalar(base+"/*path"))
			}
			mapSet(r, "upstream", scalar(upstream))
			if mapGet(r, "fhir_errors") == nil {
				mapSet(r, "fhir_errors", scalar("true"))
			}
		}
	}
	if fhirRoutes == 0 {
		return "", fmt.Errorf("%s: no route with fhir: true: the simulated users work on the embedded FHIR server", o.Config)
	}
	sessions := 0
	if plugins := mapGet(root, "plugins"); plugins != nil && plugins.Kind == yaml.MappingNode {
		for i := 1; i < len(plugins.Content); i += 2 {
			p := plugins.Content[i]
			switch t := mapGet(p, "type"); {
			case t == nil:
			case t.Value == "session":
				sessions++
				users, _ := snippet("file: " + filepath.Join(dir, "users.yaml") + "\ncreate: false\n")
				mapSet(p, "users", users)
			case t.Value == "audit":
				fleetAudit(p)
			case t.Value == "authz":
				if err := fleetAuthz(p); err != nil {
					return "", fmt.Errorf("%s: %w", o.Config, err)
				}
			case t.Value == "ratelimit":
				roles := mapGet(p, "roles")
				if roles == nil || roles.Kind != yaml.MappingNode {
					roles = &yaml.Node{Kind: yaml.MappingNode}
					mapSet(p, "roles", roles)
				}
				lim, _ := snippet("limit: 1000000000\nburst: 0\n")
				mapSet(roles, probeRole, lim)
				if k := mapGet(p, "key"); k != nil && k.Value == "ip" {
					// Counted per client IP, before the session: every
					// simulated user comes from the tool's one address.
					def, _ := snippet("limit: 1000000000\nwindow: 15m\nburst: 0\n")
					mapSet(p, "default", def)
				}
			}
		}
	}
	if sessions == 0 {
		return "", errors.New(o.Config + ": no session plugin: the simulated users log in with POST /auth/login")
	}
	out, err := yaml.Marshal(root)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "omnigate.yaml")
	return path, os.WriteFile(path, append([]byte("# Generated by omnigate scaletest from "+o.Config+".\n"), out...), 0o600)
}

// fleetAudit adapts an audit plugin to the fleet: the instances proxy to
// the FHIR server, so there is no embedded server for a fhir sink in
// their process; its records go to a JSON lines file instead, in each
// instance's own folder (as the spool does: relative paths are the
// instance's).
func fleetAudit(p *yaml.Node) {
	sinks := mapGet(p, "sinks")
	kept := &yaml.Node{Kind: yaml.SequenceNode}
	if sinks != nil && sinks.Kind == yaml.SequenceNode {
		for _, s := range sinks.Content {
			if t := mapGet(s, "type"); t == nil || t.Value != "fhir" {
				kept.Content = append(kept.Content, s)
			}
		}
	}
	if len(kept.Content) == 0 {
		file, _ := snippet("type: file\npath: ./audit.jsonl\n")
		kept.Content = append(kept.Content, file)
	}
	mapSet(p, "sinks", kept)
}

// fleetAuthz gives the probe role, the tool's own checking user, the
// right to read and write everything (it writes and reads the probe
// Patients); a config that lists no roles has the default ones written
// out, since listing a role replaces them.
func fleetAuthz(p *yaml.Node) error {
	roles := mapGet(p, "roles")
	if roles == nil || roles.Kind != yaml.MappingNode || len(roles.Content) == 0 {
		roles = &yaml.Node{}
		if err := roles.Encode(authz.DefaultRoles()); err != nil {
			return err
		}
		mapSet(p, "roles", roles)
	}
	probe, err := snippet("scopes: [user/*.cruds]\n")
	if err != nil {
		return err
	}
	mapSet(roles, probeRole, probe)
	return nil
}

func scalar(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: v} }

// snippet parses a YAML mapping.
func snippet(s string) (*yaml.Node, error) {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(s), &n); err != nil {
		return nil, err
	}
	if len(n.Content) == 0 || n.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("not a mapping: %q", s)
	}
	return n.Content[0], nil
}

// mapGet returns the value of key in mapping m, or nil.
func mapGet(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// mapSet sets key in mapping m to v, in place or at the end.
func mapSet(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, scalar(key), v)
}

// mapDel removes key from mapping m.
func mapDel(m *yaml.Node, key string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return
		}
	}
}
