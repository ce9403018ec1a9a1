package session

import (
	"strconv"
	"testing"
	"time"
)

func TestRevocations(t *testing.T) {
	v := newRevocations()
	at := func(d time.Duration, id string) *Record {
		return &Record{ID: id, UserID: "ann", Created: testT0.Add(d)}
	}
	if v.covers(at(0, "x")) {
		t.Fatal("an empty set covers a session")
	}
	v.add("ann", marker{before: testT0, keep: "k"}, testT0, time.Hour)
	for _, tc := range []struct {
		r    *Record
		want bool
	}{
		{at(-time.Minute, "a"), true},
		{at(0, "b"), true}, // at T: covered
		{at(time.Millisecond, "c"), false},
		{at(-time.Minute, "k"), false}, // kept
		{&Record{ID: "d", UserID: "bo", Created: testT0.Add(-time.Minute)}, false},
	} {
		if got := v.covers(tc.r); got != tc.want {
			t.Errorf("covers(%s of %s created %s) = %v", tc.r.ID, tc.r.UserID, tc.r.Created.Sub(testT0), got)
		}
	}
	// An older marker (a late replay) does not replace a later one.
	v.add("ann", marker{before: testT0.Add(-time.Hour)}, testT0, time.Hour)
	if v.covers(at(-time.Minute, "k")) || !v.covers(at(-time.Minute, "a")) {
		t.Error("an older marker replaced a later one")
	}
	// replace moves it only while it is the one replayed.
	v.replace("ann", marker{before: testT0.Add(time.Second)}, marker{before: testT0.Add(-time.Hour)})
	if !v.covers(at(-time.Minute, "a")) {
		t.Error("replace changed a marker it was not given")
	}
	v.replace("ann", marker{before: testT0, keep: "k"}, marker{before: testT0.Add(-time.Hour), keep: "k"})
	if v.covers(at(-time.Minute, "a")) {
		t.Error("replace did not move the replayed marker back")
	}
	// Markers past their lifetime are forgotten as others are added.
	later := testT0.Add(2 * time.Hour)
	for i := range 200 {
		v.add("u"+strconv.Itoa(i), marker{before: later}, later, time.Hour)
	}
	if _, ok := v.byUser["ann"]; ok {
		t.Error("a marker past its lifetime was kept")
	}
}
