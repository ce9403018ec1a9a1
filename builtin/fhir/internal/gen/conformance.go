package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/profile"
)

// conformanceReport is what the core tables leave out: the invariants
// that are not evaluated and the value sets of required bindings that
// cannot be expanded offline, each with why.
type conformanceReport struct {
	Invariants   map[string]string // key -> why
	Unexpandable map[string]string // value set -> why
}

// conformanceTables builds the core validation tables: the subset of the
// R4 StructureDefinitions of resources and data types (and the data type
// profiles such as SimpleQuantity) that validation reads, and the
// expansions of the value sets of their required bindings.
func conformanceTables(defs string) (*profile.Tables, *conformanceReport, error) {
	var sds []*profile.StructureDefinition
	for _, f := range []string{"profiles-resources.json", "profiles-types.json"} {
		raws, err := readBundle(filepath.Join(defs, f))
		if err != nil {
			return nil, nil, err
		}
		for _, r := range raws {
			if !bytes.Contains(r[:min(len(r), 200)], []byte(`"StructureDefinition"`)) {
				continue
			}
			var sd profile.StructureDefinition
			if err := json.Unmarshal(r, &sd); err != nil {
				return nil, nil, fmt.Errorf("decode %s: %w", f, err)
			}
			if sd.ResourceType != "StructureDefinition" || sd.FHIRVersion != "4.0.1" || sd.Abstract || sd.Snapshot == nil {
				continue
			}
			switch {
			case sd.Kind == "resource" && sd.Derivation == "specialization":
			case (sd.Kind == "complex-type" || sd.Kind == "primitive-type") && f == "profiles-types.json":
			default:
				continue
			}
			sds = append(sds, &sd)
		}
	}
	rep := &conformanceReport{Invariants: map[string]string{}, Unexpandable: map[string]string{}}
	bound := map[string]bool{}
	for _, sd := range sds {
		prune(sd, rep, bound)
	}
	sort.Slice(sds, func(i, j int) bool { return sds[i].URL < sds[j].URL })

	term, err := readTerminology(filepath.Join(defs, "valuesets.json"))
	if err != nil {
		return nil, nil, err
	}
	t := &profile.Tables{Structures: sds, ValueSets: map[string]profile.Codes{}, Unexpandable: map[string]string{}}
	for _, url := range sortedKeys(bound) {
		codes, err := term.Expand(url)
		if err != nil {
			t.Unexpandable[url] = err.Error()
			rep.Unexpandable[url] = err.Error()
			continue
		}
		t.ValueSets[url] = codes
	}
	return t, rep, nil
}

// prune keeps what validation reads: required bindings, error invariants
// the fhirpath package evaluates (ele-1 is checked natively), element ids
// only where they differ from the path. It records skipped invariants in
// rep and the value sets of required bindings in bound.
func prune(sd *profile.StructureDefinition, rep *conformanceReport, bound map[string]bool) {
	sd.ResourceType, sd.Version, sd.FHIRVersion, sd.BaseDefinition, sd.Abstract = "", "", "", "", false
	for i := range sd.Snapshot.Element {
		e := &sd.Snapshot.Element[i]
		if e.ID == e.Path {
			e.ID = ""
		}
		if e.Binding != nil {
			if e.Binding.Strength != "required" || e.Binding.ValueSet == "" {
				e.Binding = nil
			} else {
				e.Binding.ValueSet, _, _ = strings.Cut(e.Binding.ValueSet, "|")
				bound[e.Binding.ValueSet] = true
			}
		}
		var kept []profile.Constraint
		for _, c := range e.Constraint {
			if c.Severity != "error" || c.Key == "ele-1" || c.Expression == "" {
				continue
			}
			if _, why := profile.CompileInvariant(c.Expression); why != "" {
				rep.Invariants[c.Key] = why
				continue
			}
			kept = append(kept, profile.Constraint{Key: c.Key, Severity: c.Severity, Human: c.Human, Expression: c.Expression})
		}
		e.Constraint = kept
		if e.Max == "*" {
			e.Max = ""
		}
		for j := range e.Type {
			if e.Type[j].Code == "" {
				e.Type = nil // a primitive's value: a leaf
				break
			}
		}
	}
}

func readTerminology(file string) (*profile.Terminology, error) {
	raws, err := readBundle(file)
	if err != nil {
		return nil, err
	}
	t := &profile.Terminology{ValueSets: map[string]*profile.ValueSet{}, CodeSystems: map[string]*profile.CodeSystem{}}
	for _, r := range raws {
		var head struct {
			ResourceType string `json:"resourceType"`
		}
		if err := json.Unmarshal(r, &head); err != nil {
			return nil, fmt.Errorf("decode %s: %w", file, err)
		}
		switch head.ResourceType {
		case "ValueSet":
			var vs profile.ValueSet
			if err := json.Unmarshal(r, &vs); err != nil {
				return nil, fmt.Errorf("decode %s: %w", file, err)
			}
			t.ValueSets[vs.URL] = &vs
		case "CodeSystem":
			var cs profile.CodeSystem
			if err := json.Unmarshal(r, &cs); err != nil {
				return nil, fmt.Errorf("decode %s: %w", file, err)
			}
			t.CodeSystems[cs.URL] = &cs
		}
	}
	return t, nil
}

// writeConformance writes the tables gzip-compressed, reproducibly.
func writeConformance(file string, t *profile.Tables) error {
	data, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("encode conformance tables: %w", err)
	}
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	zw.Name = "conformance.json"
	zw.Write(data)
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(file, b.Bytes(), 0o644)
}

// printReport writes what the tables leave out, for the docs.
func printReport(w io.Writer, rep *conformanceReport) {
	fmt.Fprintf(w, "Invariants not evaluated (%d):\n", len(rep.Invariants))
	for _, k := range sortedKeys(rep.Invariants) {
		fmt.Fprintf(w, "  %s: %s\n", k, rep.Invariants[k])
	}
	fmt.Fprintf(w, "Required bindings not checked (%d value sets):\n", len(rep.Unexpandable))
	for _, k := range sortedKeys(rep.Unexpandable) {
		fmt.Fprintf(w, "  %s\n", rep.Unexpandable[k])
	}
}
