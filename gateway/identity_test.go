package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestNewRequestContext(t *testing.T) {
	id := &Identity{UserID: "u1", Role: "nurse"}
	ctx := NewRequestContext(context.Background(), RouteInfo{Name: "fhir", Pattern: "/fhir/R4/*path", FHIR: true}, "req-1", id)
	if info, ok := RouteFrom(ctx); !ok || info.Name != "fhir" || !info.FHIR {
		t.Errorf("RouteFrom = %+v, %v", info, ok)
	}
	if got := RequestID(ctx); got != "req-1" {
		t.Errorf("RequestID = %q", got)
	}
	if got := IdentityFrom(ctx); got != id {
		t.Errorf("IdentityFrom = %+v", got)
	}
	other := &Identity{UserID: "u2"}
	if SetIdentity(ctx, other) != ctx || IdentityFrom(ctx) != other {
		t.Error("SetIdentity did not update the context in place")
	}
	rec := httptest.NewRecorder()
	Error(rec, httptest.NewRequest("GET", "/", nil).WithContext(ctx), http.StatusForbidden, "no")
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("Error on a FHIR route context answered %q", ct)
	}
}
