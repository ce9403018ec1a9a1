package wasm

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// encode writes interactions as the host does (ABI.md): one line each,
// tab-separated fields, "%", control bytes and DEL escaped.
func encode(list []Interaction) string {
	var b strings.Builder
	for _, in := range list {
		cond := "0"
		if in.Conditional {
			cond = "1"
		}
		for i, f := range []string{in.Interaction, in.Type, in.ID, in.VersionID, in.Operation,
			in.CompartmentType, in.CompartmentID, cond, in.Method, in.URL, in.IfNoneExist} {
			if i > 0 {
				b.WriteByte('\t')
			}
			for j := 0; j < len(f); j++ {
				c := f[j]
				if c == '%' || c < 0x20 || c == 0x7f {
					fmt.Fprintf(&b, "%%%02X", c)
					continue
				}
				b.WriteByte(c)
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func TestParseInteractions(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []Interaction
		err  error
	}{
		{name: "no entries", in: "", want: []Interaction{}},
		{name: "a read",
			in: "read\tPatient\tp1\t\t\t\t\t0\tGET\tPatient/p1\t\n",
			want: []Interaction{{FHIR: FHIR{Interaction: fhirreq.Read, Type: "Patient", ID: "p1"},
				Method: "GET", URL: "Patient/p1"}}},
		{name: "batch entries in order, a non-interaction kept",
			in: "delete\tObservation\to1\t\t\t\t\t0\tDELETE\tObservation/o1\t\n" +
				"\t\t\t\t\t\t\t0\tFROB\tPatient/p1\t\n" +
				"create\tPatient\t\t\t\t\t\t1\tPOST\tPatient\tidentifier=x%7C1\n",
			want: []Interaction{
				{FHIR: FHIR{Interaction: fhirreq.Delete, Type: "Observation", ID: "o1"}, Method: "DELETE", URL: "Observation/o1"},
				{Method: "FROB", URL: "Patient/p1"},
				{FHIR: FHIR{Interaction: fhirreq.Create, Type: "Patient"}, Conditional: true, Method: "POST", URL: "Patient", IfNoneExist: "identifier=x|1"},
			}},
		{name: "escapes decoded",
			in:   "operation\t\t\t\tfoo%0A%09bar\t\t\t0\tPOST\ta%25b%0Dc%7F\t\n",
			want: []Interaction{{FHIR: FHIR{Interaction: fhirreq.Operation, Operation: "foo\n\tbar"}, Method: "POST", URL: "a%b\rc\x7f"}}},
		{name: "compartment search",
			in: "search-type\tObservation\t\t\t\tPatient\tp1\t0\tGET\tPatient/p1/Observation?code=x\t\n",
			want: []Interaction{{FHIR: FHIR{Interaction: fhirreq.SearchType, Type: "Observation", CompartmentType: "Patient", CompartmentID: "p1"},
				Method: "GET", URL: "Patient/p1/Observation?code=x"}}},
		{name: "fields a later host adds are ignored",
			in:   "read\tPatient\tp1\t\t\t\t\t0\tGET\tPatient/p1\t\tnew\tfields\n",
			want: []Interaction{{FHIR: FHIR{Interaction: fhirreq.Read, Type: "Patient", ID: "p1"}, Method: "GET", URL: "Patient/p1"}}},
		{name: "too few fields", in: "read\tPatient\tp1\n", err: ErrInvalid},
		{name: "no final newline", in: "read\tPatient\tp1\t\t\t\t\t0\tGET\tPatient/p1\t", err: ErrInvalid},
		{name: "bad conditional flag", in: "read\tPatient\tp1\t\t\t\t\tyes\tGET\tPatient/p1\t\n", err: ErrInvalid},
		{name: "bad escape", in: "read\tPatient\tp1\t\t\t\t\t0\tGET\tPatient/p1%G1\t\n", err: ErrInvalid},
		{name: "truncated escape", in: "read\tPatient\tp1\t\t\t\t\t0\tGET\tPatient/p1\t%4\n", err: ErrInvalid},
		{name: "empty line", in: "\n", err: ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseInteractions(tc.in)
			if err != tc.err {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if tc.err == nil && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestInteractionQuery(t *testing.T) {
	in := Interaction{URL: "Observation?code=a%7Cb&subject=Patient/p1"}
	if q := in.Query(); q.Get("code") != "a|b" || q.Get("subject") != "Patient/p1" {
		t.Errorf("query %v", q)
	}
	if q := (&Interaction{URL: "Patient/p1"}).Query(); len(q) != 0 {
		t.Errorf("query of a read %v", q)
	}
}

func TestInteractionsOutsideAGuest(t *testing.T) {
	var r Request
	r.reset()
	if _, err := r.Interactions(); err != ErrPhase {
		t.Errorf("error %v, want ErrPhase", err)
	}
}

// FuzzParseInteractions checks that the parser of a value from the host
// never panics, and that whatever it accepts it reads back the same after
// writing it out as the host does.
func FuzzParseInteractions(f *testing.F) {
	f.Add("read\tPatient\tp1\t\t\t\t\t0\tGET\tPatient/p1\t\n")
	f.Add("\t\t\t\t\t\t\t0\tFROB\t%0A%25\t\nupdate\tPatient\t\t\t\t\t\t1\tPUT\tPatient?identifier=x\t\n")
	f.Add("a\tb\tc\td\te\tf\tg\t1\ti\tj\tk\tl\n")
	f.Add("%")
	f.Add("\n\n")
	f.Fuzz(func(t *testing.T, s string) {
		list, err := parseInteractions(s)
		if err != nil {
			if list != nil {
				t.Fatalf("a list with error %v", err)
			}
			return
		}
		again, err := parseInteractions(encode(list))
		if err != nil {
			t.Fatalf("re-encoded value refused: %v", err)
		}
		if !reflect.DeepEqual(list, again) {
			t.Fatalf("round trip changed\n%+v\n%+v", list, again)
		}
	})
}

// FuzzInteractionFields checks that any field values, written as the host
// writes them, are read back exactly.
func FuzzInteractionFields(f *testing.F) {
	f.Add("delete", "Observation", "GET", "Observation?code=a\tb\nc%", "", true)
	f.Add("", "", "", "", "x=\x00\x7f", false)
	f.Fuzz(func(t *testing.T, interaction, typ, method, url, ifNoneExist string, cond bool) {
		want := []Interaction{{FHIR: FHIR{Interaction: interaction, Type: typ, Operation: url},
			Conditional: cond, Method: method, URL: url, IfNoneExist: ifNoneExist}}
		got, err := parseInteractions(encode(want))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, %v\nwant %+v", got, err, want)
		}
	})
}
