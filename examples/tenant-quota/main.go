// Command tenant-quota enforces a daily request quota per tenant. Counts
// live in the shared KV, so with Redis configured the quota holds across
// every gateway instance. Days are UTC days of the host's clock.
//
// Build it with "omnigate plugin build ./examples/tenant-quota".
package main

import (
	"errors"
	"strconv"
	"time"

	"github.com/omnigate/omnigate/sdk/wasm"
)

var config = struct {
	// Header names the tenant. Default X-Tenant.
	Header string `json:"header"`
	// Limit is the daily quota of a tenant not in Limits. Required.
	Limit int64 `json:"limit"`
	// Limits sets per-tenant quotas.
	Limits map[string]int64 `json:"limits"`
	// FailOpen lets requests pass when the KV store fails (the default
	// refuses them with 503).
	FailOpen bool `json:"fail_open"`
}{Header: "X-Tenant"}

func init() {
	wasm.OnStart(func() error {
		if err := wasm.DecodeConfig(&config); err != nil {
			return err
		}
		if config.Limit <= 0 {
			return errors.New("config: limit must be positive")
		}
		return nil
	})
	wasm.OnRequest(onRequest)
}

func main() {}

func onRequest(r *wasm.Request) {
	tenant := r.Header.Get(config.Header)
	if tenant == "" || len(tenant) > 64 {
		r.Deny(400, "missing or invalid "+config.Header+" header")
		return
	}
	limit := config.Limit
	if l, ok := config.Limits[tenant]; ok {
		limit = l
	}
	now := wasm.Now().UTC()
	day := now.Format("2006-01-02")
	midnight := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	// The key outlives the day by a margin, so a late clock still counts.
	n, err := wasm.KV.Incr("quota:"+tenant+":"+day, 1, midnight.Sub(now)+time.Hour)
	if err != nil {
		wasm.Count("kv_errors", 1)
		if !config.FailOpen {
			r.Deny(503, "quota store unavailable")
		}
		return
	}
	if n > limit {
		wasm.Count("over_quota", 1)
		if n == limit+1 {
			wasm.Warnf("tenant %s reached its daily quota of %d", tenant, limit)
		}
		h := r.ReplyHeader()
		h.Set("Retry-After", strconv.Itoa(int(midnight.Sub(now).Seconds())+1))
		h.Set("X-Quota-Limit", strconv.FormatInt(limit, 10))
		h.Set("X-Quota-Remaining", "0")
		r.Deny(429, "daily quota of "+strconv.FormatInt(limit, 10)+" requests exceeded")
		return
	}
	// Tell the upstream how much is left (the client sees it only on 429).
	r.Header.Set("X-Quota-Remaining", strconv.FormatInt(limit-n, 10))
}
