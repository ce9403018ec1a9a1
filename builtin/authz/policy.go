package authz

import (
	"hash/maphash"
	"slices"
	"sync"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
)

// identityPolicy is the policy of one identity (role, patient, scopes),
// built once and kept in the policy cache.
type identityPolicy struct {
	role    string
	patient string
	scopes  []string // as the identity carries them, to tell identities apart

	// pol is nil when the identity may do nothing; refusal says why.
	pol      *access.Policy
	refusal  string
	granted  []access.Scope // the effective scopes, widened by break-glass
	confined bool
}

func (ip *identityPolicy) is(id *gateway.Identity) bool {
	return ip.role == id.Role && ip.patient == id.PatientID && slices.Equal(ip.scopes, id.Scopes)
}

// policyCache keeps built policies, bounded: two generations of at most
// max/2 entries each; a lookup that finds an entry in the old generation
// moves it to the new one, and when the new one is full the old one is
// dropped. Recently used policies stay; the rest go, without a list to
// maintain on every hit.
type policyCache struct {
	seed maphash.Seed
	half int

	mu       sync.RWMutex
	cur, old map[uint64][]*identityPolicy
	n        int // entries in cur
}

func newPolicyCache(size int) *policyCache {
	return &policyCache{seed: maphash.MakeSeed(), half: max(1, size/2), cur: map[uint64][]*identityPolicy{}}
}

func (pc *policyCache) hash(id *gateway.Identity) uint64 {
	var h maphash.Hash
	h.SetSeed(pc.seed)
	h.WriteString(id.Role)
	h.WriteByte(0)
	h.WriteString(id.PatientID)
	for _, s := range id.Scopes {
		h.WriteByte(0)
		h.WriteString(s)
	}
	return h.Sum64()
}

// get returns the policy of id, building it with build on a miss.
func (pc *policyCache) get(id *gateway.Identity, build func(*gateway.Identity) *identityPolicy) *identityPolicy {
	k := pc.hash(id)
	pc.mu.RLock()
	for _, ip := range pc.cur[k] {
		if ip.is(id) {
			pc.mu.RUnlock()
			return ip
		}
	}
	var found *identityPolicy
	for _, ip := range pc.old[k] {
		if ip.is(id) {
			found = ip
			break
		}
	}
	pc.mu.RUnlock()
	if found == nil {
		found = build(id)
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for _, ip := range pc.cur[k] {
		if ip.is(id) { // another request built it meanwhile
			return ip
		}
	}
	if pc.n >= pc.half {
		pc.old, pc.cur, pc.n = pc.cur, map[uint64][]*identityPolicy{}, 0
	}
	pc.cur[k] = append(pc.cur[k], found)
	pc.n++
	return found
}

// len returns how many policies are kept.
func (pc *policyCache) len() int {
	pc.mu.RLock()
	defer pc.mu.RUnlock()
	n := pc.n
	for _, l := range pc.old {
		n += len(l)
	}
	return n
}

// buildPolicy makes the policy of id: its role's scopes when it carries
// none, else its own narrowed by its role's, in its patient context.
func (p *Plugin) buildPolicy(id *gateway.Identity) *identityPolicy {
	ip := &identityPolicy{role: id.Role, patient: id.PatientID, scopes: slices.Clone(id.Scopes)}
	rc, ok := p.cfg.Roles[id.Role]
	if !ok {
		if id.Role == "" {
			ip.refusal = "the identity has no role"
		} else {
			ip.refusal = "role " + id.Role + " has no FHIR access"
		}
		return ip
	}
	granted := rc.parsed
	if len(id.Scopes) > 0 {
		granted = access.Narrow(access.ParseScopes(id.Scopes), rc.parsed)
	}
	if len(granted) == 0 {
		ip.refusal = "the identity holds no resource scope its role allows"
		return ip
	}
	ip.granted, ip.confined = granted, rc.PatientContext
	ip.pol = access.NewPolicy(granted, p.options(id, rc.PatientContext, ""))
	return ip
}

func (p *Plugin) options(id *gateway.Identity, confined bool, breakGlass string) access.PolicyOptions {
	return access.PolicyOptions{Patient: id.PatientID, ConfineToPatient: confined, Readable: p.cfg.ReadableTypes, BreakGlass: breakGlass}
}

// breakGlassPolicy widens the identity's policy by the break-glass scopes,
// for one request.
func (p *Plugin) breakGlassPolicy(id *gateway.Identity, ip *identityPolicy, reason string) *access.Policy {
	scopes := append(slices.Clone(ip.granted), p.cfg.BreakGlass.parsed...)
	return access.NewPolicy(scopes, p.options(id, ip.confined, reason))
}
