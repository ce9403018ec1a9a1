package plural

import "testing"

func TestOf(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{Of(0, "sink"), "0 sinks"},
		{Of(1, "sink"), "1 sink"},
		{Of(int64(2), "record"), "2 records"},
		{Of(1, "policy", "policies"), "1 policy"},
		{Of(3, "policy", "policies"), "3 policies"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
