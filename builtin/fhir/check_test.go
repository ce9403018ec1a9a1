package fhir

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// writeRaw stores resources as given, all at one instant (as one
// transaction does), bypassing the server's processing: the way a store
// written by an earlier release holds them.
func writeRaw(t *testing.T, h *Handler, at time.Time, resources ...string) {
	t.Helper()
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		for _, body := range resources {
			tree, err := decodeJSON([]byte(body))
			if err != nil {
				return err
			}
			typ, id := tree["resourceType"].(string), tree["id"].(string)
			version := int64(1)
			if cur, err := tx.Read(context.Background(), typ, id); err == nil {
				version = cur.Version + 1
			}
			v := &store.Version{Type: typ, ID: id, Version: version, Updated: at, Method: "PUT", Body: []byte(body)}
			if tree["deleted"] == true {
				v.Deleted, v.Body, v.Method = true, nil, "DELETE"
				if err := tx.Put(context.Background(), v, nil); err != nil {
					return err
				}
				continue
			}
			if err := tx.Put(context.Background(), v, search.Index(typ, id, tree)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCheck(t *testing.T) {
	h := newTestServer(t)
	t1, t2 := testEpoch.Add(time.Hour), testEpoch.Add(2*time.Hour)
	// One transaction of an earlier release: fullUrls replaced in strings.
	writeRaw(t, h, t1,
		`{"resourceType":"Patient","id":"p1"}`,
		`{"resourceType":"Location","id":"l1","identifier":[{"system":"urn:ietf:rfc:3986","value":"Location/l1"}]}`,
		`{"resourceType":"DocumentReference","id":"d1","status":"current","identifier":[{"value":"Patient/p1"}],"subject":{"reference":"Patient/p1"},"content":[{"attachment":{"url":"Patient/p1"}}]}`,
		`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"Patient/p1"},"subject":{"reference":"Patient/p1"},
		  "performer":[{"reference":"Practitioner?identifier=urn:npi|1"}],"hasMember":[{"reference":"Observation/gone"}],"derivedFrom":[{"reference":"urn:uuid:abc"}],
		  "focus":[{"reference":"Location/l1/_history/1"},{"reference":"http://elsewhere.example/Patient/1"},{"reference":"#c"}]}`,
		`{"resourceType":"Observation","id":"del","status":"final","code":{"text":"x"}}`,
	)
	// Later writes: not in the same transaction as what they name.
	writeRaw(t, h, t2,
		`{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"identifier":[{"value":"Patient/p1"}],"hasMember":[{"reference":"Observation/del"}]}`,
		`{"resourceType":"DocumentReference","id":"d1","status":"current","identifier":[{"value":"Patient/p1"}],"content":[{"attachment":{"url":"x"}}]}`,
		`{"resourceType":"Observation","id":"del","deleted":true}`,
	)
	var got []Finding
	sum, err := h.Check(context.Background(), func(f Finding) { got = append(got, f) })
	if err != nil {
		t.Fatal(err)
	}
	want := []Finding{
		{RewrittenString, "DocumentReference", "d1", 1, "DocumentReference.identifier[0].value", "Patient/p1"},
		{DanglingReference, "Observation", "o1", 1, "Observation.hasMember[0].reference", "Observation/gone"},
		{DanglingReference, "Observation", "o2", 1, "Observation.hasMember[0].reference", "Observation/del"},
		{RewrittenString, "Location", "l1", 1, "Location.identifier[0].value", "Location/l1"},
		{RewrittenString, "Observation", "o1", 1, "Observation.code.text", "Patient/p1"},
		{UnresolvedReference, "Observation", "o1", 1, "Observation.performer[0].reference", "Practitioner?identifier=…"},
		{UnresolvedReference, "Observation", "o1", 1, "Observation.derivedFrom[0].reference", "urn:uuid:abc"},
	}
	key := func(f Finding) string { return f.Type + "/" + f.ID + " " + f.Element }
	slices.SortFunc(got, func(a, b Finding) int { return strings.Compare(key(a), key(b)) })
	slices.SortFunc(want, func(a, b Finding) int { return strings.Compare(key(a), key(b)) })
	if !slices.Equal(got, want) {
		t.Errorf("findings\n%v\nwant\n%v", got, want)
	}
	if sum.Resources != 5 || sum.Versions != 8 || sum.Findings[RewrittenString] != 3 || sum.Findings[DanglingReference] != 2 || sum.Findings[UnresolvedReference] != 2 {
		t.Errorf("summary %+v", sum)
	}
}
