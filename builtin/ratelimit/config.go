package ratelimit

import (
	"errors"
	"fmt"
	"net/netip"
	"net/textproto"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// Config is the config of a ratelimit plugin instance (type: ratelimit).
//
//	plugins:
//	  ratelimit:
//	    type: ratelimit
//	    default: {limit: 100, window: 15m, burst: 20, burst_window: 1s}
//	    roles:
//	      physician: {limit: 1000}
//	      anonymous: {limit: 30}
//	    routes:
//	      fhir-search: {cost: {default: 3}}
type Config struct {
	// Key is what requests are counted by: "identity" (the caller's user
	// id, else the client IP), "ip" (the client IP) or "header" (the value
	// of Header, else the identity, else the client IP). Default identity.
	Key string `yaml:"key"`
	// Header names the request header counted by key: header, for example
	// X-API-Key. Its value is hashed before use: it never reaches Redis,
	// logs or admin endpoints.
	Header string `yaml:"header"`
	// TrustedProxies are addresses or CIDR prefixes of proxies in front of
	// the gateway. Only when the connection comes from one is
	// X-Forwarded-For read: the client is the rightmost address that is
	// not a trusted proxy. Default: the gateway's server.trusted_proxies
	// (none unless set: the connection's address is the client, and
	// X-Forwarded-For is ignored).
	TrustedProxies []string `yaml:"trusted_proxies"`
	// IPv6Prefix counts IPv6 clients by network prefix of this length, as
	// one host usually holds a whole /64. Default 64; 128 counts each
	// address.
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// Default is the limit of roles without their own. Default 100
	// requests per 15m, burst 20 per 1s.
	Default Limit `yaml:"default"`
	// Roles are limits by role name (the Identity's role; anonymous
	// callers have AnonymousRole). Unset fields inherit from Default.
	Roles map[string]Limit `yaml:"roles"`
	// AnonymousRole is the role of requests without an identity. Default
	// "anonymous".
	AnonymousRole string `yaml:"anonymous_role"`
	// Routes override limits, cost and counter group by route name.
	Routes map[string]RouteLimits `yaml:"routes"`
	// Cost is how many units a request uses. Default 1 for every request.
	Cost Cost `yaml:"cost"`
	// CountRejected counts rejected requests against the window, so a
	// client that keeps sending while limited stays limited. Default
	// false.
	CountRejected bool `yaml:"count_rejected"`
	// Block blocks clients that keep going over their limit.
	Block BlockConfig `yaml:"block"`
	// OnRedisDown is what happens while Redis is configured but down:
	// "memory" (the default) decides in memory, with each limit divided by
	// the number of live instances last seen; "deny" answers 503; "allow"
	// lets every request through.
	OnRedisDown string `yaml:"on_redis_down"`
	// LocalCache answers clients that are over a limit or blocked from
	// memory until their retry time, without a Redis round trip. Default
	// true.
	LocalCache *bool `yaml:"local_cache"`
	// Precision is the number of sub-windows per window: a request counts
	// for between one window and one window plus window/precision.
	// Default 10.
	Precision int `yaml:"precision"`
	// MaxKeys bounds the clients kept in memory (memory store, local
	// cache, statistics). Default 100000.
	MaxKeys int `yaml:"max_keys"`
	// Headers sends the IETF draft RateLimit-Policy and RateLimit fields.
	// Default true.
	Headers *bool `yaml:"headers"`
	// LegacyHeaders sends X-RateLimit-Limit, -Remaining and -Reset (Unix
	// time in seconds). Default true.
	LegacyHeaders *bool `yaml:"legacy_headers"`

	trusted []netip.Prefix
}

// Limit is a sliding-window limit with optional burst protection.
type Limit struct {
	// Limit is the number of cost units allowed per Window. Required in
	// default; inherited elsewhere.
	Limit int64 `yaml:"limit"`
	// Window is the sliding window. Inherited when zero.
	Window time.Duration `yaml:"window"`
	// Burst is the number of units allowed per BurstWindow; 0 turns burst
	// protection off. Inherited when unset.
	Burst *int64 `yaml:"burst"`
	// BurstWindow is the burst window. Inherited when zero; default 1s.
	BurstWindow time.Duration `yaml:"burst_window"`
}

// RouteLimits override the plugin's settings on one route.
type RouteLimits struct {
	// Group is the counter scope of the route: routes of one group share
	// counters. Default: the route's own name, so two routes never share
	// a counter by accident.
	Group string `yaml:"group"`
	// Default replaces the plugin's default limit on this route.
	Default *Limit `yaml:"default"`
	// Roles replace the plugin's role limits on this route; unset fields
	// inherit from the route's default, then the plugin's role limit.
	Roles map[string]Limit `yaml:"roles"`
	// Cost replaces the plugin's cost on this route.
	Cost *Cost `yaml:"cost"`
}

// Cost is the number of units a request uses.
type Cost struct {
	// Default is the cost of a request. Default 1.
	Default int64 `yaml:"default"`
	// Methods sets the cost of requests by HTTP method, e.g. {POST: 2}.
	Methods map[string]int64 `yaml:"methods"`
	// Search is the cost of FHIR searches (GET [base]/Type, GET
	// [base]/Type/_search, POST [base]/Type/_search) on FHIR routes.
	// Default: as other requests.
	//
	// On FHIR routes a batch or transaction Bundle posted to the base
	// costs the sum of its entries, each as the request it stands for
	// (at least the cost of the POST).
	Search int64 `yaml:"search"`
}

// BlockConfig blocks abusive clients: a client rejected more than After
// times within Within is blocked for Duration, then 2×Duration, 4×… up to
// MaxDuration on repeat offences; offences are forgotten ForgetAfter after
// the last one. Blocked clients are answered 429 without counting.
type BlockConfig struct {
	// After is the number of rejections that triggers a block; 0 turns
	// blocking off. Default 20.
	After int64 `yaml:"after"`
	// Within is the period rejections are counted in. Default 1m.
	Within time.Duration `yaml:"within"`
	// Duration is the first block's length. Default 5m.
	Duration time.Duration `yaml:"duration"`
	// MaxDuration caps escalated blocks. Default 1h.
	MaxDuration time.Duration `yaml:"max_duration"`
	// ForgetAfter resets the offence count. Default 24h.
	ForgetAfter time.Duration `yaml:"forget_after"`
}

// Defaults returns the config with every default set.
func Defaults() *Config {
	burst := int64(20)
	return &Config{
		Key:           KeyIdentity,
		IPv6Prefix:    64,
		Default:       Limit{Limit: 100, Window: 15 * time.Minute, Burst: &burst},
		AnonymousRole: "anonymous",
		Cost:          Cost{Default: 1},
		Block: BlockConfig{After: 20, Within: time.Minute, Duration: 5 * time.Minute,
			MaxDuration: time.Hour, ForgetAfter: 24 * time.Hour},
		OnRedisDown: DownMemory,
		Precision:   10,
		MaxKeys:     100000,
	}
}

// What requests are counted by.
const (
	KeyIdentity = "identity"
	KeyIP       = "ip"
	KeyHeader   = "header"
)

// Validate checks the config and resolves trusted proxies.
func (c *Config) Validate() error {
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, gateway.FieldErrorf(key, format, args...))
	}
	switch c.Key {
	case KeyIdentity, KeyIP:
	case KeyHeader:
		if c.Header == "" {
			fail("header", "required with key: header")
		}
	default:
		fail("key", "must be identity, ip or header, not %q", c.Key)
	}
	if c.Header != "" {
		c.Header = textproto.CanonicalMIMEHeaderKey(c.Header)
	}
	c.trusted = c.trusted[:0]
	for i, s := range c.TrustedProxies {
		p, err := gateway.ParsePrefix(s)
		if err != nil {
			fail(fmt.Sprintf("trusted_proxies[%d]", i), "%v", err)
			continue
		}
		c.trusted = append(c.trusted, p)
	}
	if c.IPv6Prefix < 1 || c.IPv6Prefix > 128 {
		fail("ipv6_prefix", "must be between 1 and 128")
	}
	if c.Precision < 1 || c.Precision > 100 {
		fail("precision", "must be between 1 and 100")
	}
	if c.MaxKeys < 1 {
		fail("max_keys", "must be positive")
	}
	switch c.OnRedisDown {
	case DownMemory, DownDeny, DownAllow:
	default:
		fail("on_redis_down", "must be memory, deny or allow, not %q", c.OnRedisDown)
	}
	if c.AnonymousRole == "" {
		fail("anonymous_role", "must not be empty")
	}
	defaultBW := c.Default.BurstWindow != 0
	if !defaultBW {
		c.Default.BurstWindow = defaultBurstWindow
	}
	if c.Default.Burst == nil {
		c.Default.Burst = new(int64)
	}
	errs = append(errs, c.checkLimit("default", c.Default, defaultBW, c.Cost)...)
	for _, role := range sortedKeys(c.Roles) {
		l := c.Roles[role]
		errs = append(errs, c.checkLimit("roles."+role, inherit(l, c.Default), l.BurstWindow != 0 || defaultBW, c.Cost)...)
	}
	errs = append(errs, c.checkCost("cost", c.Cost)...)
	for _, name := range sortedKeys(c.Routes) {
		rl := c.Routes[name]
		key := "routes." + name
		cost := c.Cost
		if rl.Cost != nil {
			cost = *rl.Cost
			errs = append(errs, c.checkCost(key+".cost", cost)...)
		}
		def := c.Default
		if rl.Default != nil {
			def = inherit(*rl.Default, c.Default)
			errs = append(errs, c.checkLimit(key+".default", def, rl.Default.BurstWindow != 0 || defaultBW, cost)...)
		}
		for _, role := range sortedKeys(rl.Roles) {
			set := defaultBW || rl.Roles[role].BurstWindow != 0 || c.Roles[role].BurstWindow != 0 ||
				rl.Default != nil && rl.Default.BurstWindow != 0
			errs = append(errs, c.checkLimit(key+".roles."+role, roleLimit(c, rl, def, role), set, cost)...)
		}
	}
	b := &c.Block
	if b.After < 0 {
		fail("block.after", "must not be negative")
	}
	if b.After > 0 {
		for k, d := range map[string]time.Duration{"block.within": b.Within, "block.duration": b.Duration,
			"block.max_duration": b.MaxDuration, "block.forget_after": b.ForgetAfter} {
			if d < time.Millisecond {
				fail(k, "must be at least 1ms")
			}
		}
		if b.MaxDuration < b.Duration {
			fail("block.max_duration", "must not be less than block.duration")
		}
	}
	return errors.Join(errs...)
}

// defaultBurstWindow is the burst window when none is set.
const defaultBurstWindow = time.Second

// checkLimit checks a resolved limit and that the largest cost fits it. One
// mistake gives one error: a window too short for the burst window is
// blamed on burst_window when the file set one (bwSet), and on the window
// otherwise, so that a file that never wrote burst_window is never told to
// change it.
func (c *Config) checkLimit(key string, l Limit, bwSet bool, cost Cost) []error {
	var errs []error
	fail := func(k, format string, args ...any) {
		errs = append(errs, gateway.FieldErrorf(k, format, args...))
	}
	n := time.Duration(max(c.Precision, 1))
	if l.Limit <= 0 {
		fail(key+".limit", "must be positive")
	}
	if l.Window < n*time.Millisecond {
		fail(key+".window", "must be at least %s (1ms per sub-window)", n*time.Millisecond)
		return errs
	}
	burst := int64(0)
	if l.Burst != nil {
		burst = *l.Burst
	}
	switch {
	case burst < 0:
		fail(key+".burst", "must not be negative")
	case burst > 0 && l.BurstWindow < n*time.Millisecond:
		fail(key+".burst_window", "must be at least %s", n*time.Millisecond)
	case burst > 0 && l.BurstWindow >= l.Window && bwSet:
		fail(key+".burst_window", "must be shorter than the window (%s)", l.Window)
	case burst > 0 && l.BurstWindow >= l.Window:
		fail(key+".window", "must be longer than the burst window (%s by default); set burst_window, or burst: 0 to turn burst protection off", l.BurstWindow)
	}
	if m := maxCost(cost); l.Limit > 0 && (m > l.Limit || burst > 0 && m > burst) {
		fail(key, "a request costing %d could never pass this limit", m)
	}
	return errs
}

func (c *Config) checkCost(key string, cost Cost) []error {
	var errs []error
	if cost.Default < 1 {
		errs = append(errs, gateway.FieldErrorf(key+".default", "must be at least 1"))
	}
	if cost.Search < 0 {
		errs = append(errs, gateway.FieldErrorf(key+".search", "must not be negative"))
	}
	for _, m := range sortedKeys(cost.Methods) {
		if !slices.Contains([]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}, strings.ToUpper(m)) {
			errs = append(errs, gateway.FieldErrorf(key+".methods."+m, "unknown method"))
		}
		if cost.Methods[m] < 1 {
			errs = append(errs, gateway.FieldErrorf(key+".methods."+m, "must be at least 1"))
		}
	}
	return errs
}

func maxCost(c Cost) int64 {
	m := max(c.Default, c.Search)
	for _, v := range c.Methods {
		m = max(m, v)
	}
	return m
}

// roleLimit resolves the limit of role on a route: the route's role limit,
// else the plugin's role limit, else the route's default (def), each
// filling its unset fields from the next.
func roleLimit(c *Config, rl RouteLimits, def Limit, role string) Limit {
	lim := def
	if l, ok := c.Roles[role]; ok {
		lim = inherit(l, lim)
	}
	if l, ok := rl.Roles[role]; ok {
		lim = inherit(l, lim)
	}
	return lim
}

// roleNames lists the roles named in any of the maps, sorted.
func roleNames(maps ...map[string]Limit) []string {
	set := map[string]Limit{}
	for _, m := range maps {
		for k, v := range m {
			set[k] = v
		}
	}
	return sortedKeys(set)
}

// inherit fills the unset fields of l from base.
func inherit(l, base Limit) Limit {
	if l.Limit == 0 {
		l.Limit = base.Limit
	}
	if l.Window == 0 {
		l.Window = base.Window
	}
	if l.Burst == nil {
		l.Burst = base.Burst
	}
	if l.BurstWindow == 0 {
		l.BurstWindow = base.BurstWindow
	}
	return l
}

func (l Limit) policy() Policy {
	p := Policy{Limit: l.Limit, Window: l.Window, BurstWindow: l.BurstWindow}
	if l.Burst != nil {
		p.Burst = *l.Burst
	}
	return p
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
