package storetest

import (
	"strconv"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// testChains: chained parameters (any depth, with and without :Type, to
// several target types) and _has (nested, with chains inside and around
// it), over SearchData. An inner search never finds a deleted resource,
// and one confined to a compartment sees only that compartment.
func testChains(t *testing.T, s store.Store) {
	LoadSearchData(t, s)
	checkSearches(t, s, []searchCase{
		{"chain with :Type", "Observation", "subject:Patient.name=garcia", "o1,o2"},
		{"chain of an identifier", "Observation", "patient.identifier=http://hosp.example/mrn|MRN-2", "o3"},
		{"chain to several target types", "Observation", "subject.name=smith", "o3,o5"},
		{"chain finds no match", "Observation", "patient.name=nobody", ""},
		{"chain skips deleted targets", "Observation", "patient.gender=male", "o1,o2"},
		{"chain to _id", "Observation", "patient._id=p2", "o3"},
		{"chain with a modifier at its end", "Observation", "patient.family:exact=Smith", "o3"},
		{"chain values ORed", "Observation", "patient.family=garcia,zed", "o1,o2"},
		{"chain clauses ANDed", "Observation", "patient.family=smith&patient.given=anna", "o3"},
		{"chain and another clause", "Observation", "patient.gender=male&value-quantity=gt6", "o2"},
		{"chain of two links", "Observation", "subject:Patient.general-practitioner.name=who", "o1,o2"},
		{"chain of two links with :Type", "Observation", "subject:Patient.general-practitioner:Practitioner.name=who", "o1,o2"},
		{"chain through organization", "Observation", "subject:Patient.organization.name=acme", "o3"},
		{"chain of a Patient", "Patient", "general-practitioner.name=who", "p1"},
		{"chain to a _has", "Observation", "patient._has:RiskAssessment:subject:probability=gt0.5", "o3"},
		{"_has", "Patient", "_has:Observation:patient:code=1234-5", "p1,p3"},
		{"_has by another parameter", "Patient", "_has:Observation:subject:value-quantity=gt6", "p1,p2"},
		{"_has and another clause", "Patient", "_has:Observation:patient:code=1234-5&gender=female", "p3"},
		{"_has of one", "Patient", "_has:Observation:patient:status=amended", "p1"},
		{"_has finds none", "Patient", "_has:Observation:patient:code=nothing", ""},
		{"_has of a Practitioner", "Practitioner", "_has:Patient:general-practitioner:name=garcia", "dr1"},
		{"_has nested", "Practitioner", "_has:Patient:general-practitioner:_has:Observation:patient:code=1234-5", "dr1"},
		{"_has nested finds none", "Practitioner", "_has:Patient:general-practitioner:_has:Observation:patient:code=8867-4", ""},
		{"_has with a chain inside", "Patient", "_has:Observation:patient:performer:Practitioner.name=who", "p1"},
		{"_has clauses ANDed", "Patient", "_has:Observation:patient:code=1234-5&_has:RiskAssessment:subject:probability=lt0.5", "p1"},
		{"_has never finds a deleted resource", "Patient", "_has:Observation:patient:code:text=about", ""},
	})
	// Inner searches confined (as access control confines them).
	t.Run("inner compartment", func(t *testing.T) {
		q := query(t, "Observation", "subject.name=smith")
		for _, in := range q.Clauses[0].Chain.Queries {
			in.Compartment = "p2"
		}
		if got := found(t, s, q); got != "o3" {
			t.Errorf("chain confined to Patient/p2: %q, want o3", got)
		}
		q = query(t, "Patient", "_has:Observation:patient:code=1234-5")
		q.Clauses[0].Chain.Queries[0].Compartment = "p3"
		if got := found(t, s, q); got != "p3" {
			t.Errorf("_has confined to Patient/p3: %q, want p3", got)
		}
	})
	t.Run("inner alternatives", func(t *testing.T) {
		q := query(t, "Patient", "_has:Observation:patient:code=1234-5")
		q.Clauses[0].Chain.Queries[0].Alternatives = [][]search.Clause{query(t, "Observation", "status=amended").Clauses}
		if got := found(t, s, q); got != "p1" {
			t.Errorf("_has confined to status=amended: %q, want p1", got)
		}
	})
}

// CompositeData are the resources of the composite conformance cases: a
// blood pressure panel per Observation (components), plain values, a
// molecular sequence with two variants and a document that replaces
// another.
func CompositeData() []Resource {
	bp := func(id string, sys, dia int) Resource {
		return Resource{"Observation", id, `{"resourceType":"Observation","id":"` + id + `","status":"final",
			"code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},"component":[
			{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":` + itoa(sys) + `,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},
			{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":` + itoa(dia) + `,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}`}
	}
	return []Resource{
		bp("c1", 120, 80),
		bp("c2", 140, 95),
		{"Observation", "c3", `{"resourceType":"Observation","id":"c3","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},
			"valueQuantity":{"value":130,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}`},
		{"Observation", "c4", `{"resourceType":"Observation","id":"c4","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1234-5"}]},
			"valueCodeableConcept":{"coding":[{"system":"http://snomed.info/sct","code":"260385009","display":"Negative"}]}}`},
		{"Observation", "c5", `{"resourceType":"Observation","id":"c5","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1234-5"}]},
			"valueString":"Positive"}`},
		{"Observation", "c6", `{"resourceType":"Observation","id":"c6","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"9999-9"}]},
			"valueDateTime":"2020-05-01T10:00:00Z"}`},
		{"MolecularSequence", "ms1", `{"resourceType":"MolecularSequence","id":"ms1","coordinateSystem":0,
			"referenceSeq":{"chromosome":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/chromosome-human","code":"1"}]},
			"referenceSeqId":{"coding":[{"system":"http://www.ncbi.nlm.nih.gov/nuccore","code":"NC_000001.11"}]},"windowStart":22125500,"windowEnd":22125510},
			"variant":[{"start":22125503,"end":22125504},{"start":22125600,"end":22125700}]}`},
		{"DocumentReference", "d1", `{"resourceType":"DocumentReference","id":"d1","status":"current","content":[{"attachment":{"url":"http://example.org/d1"}}],
			"relatesTo":[{"code":"replaces","target":{"reference":"DocumentReference/d0"}}]}`},
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// testComposites: composite parameters match within one element instance
// (one component, one variant), with prefixes on the later components.
func testComposites(t *testing.T, s store.Store) {
	w := &Writer{S: s}
	for _, r := range CompositeData() {
		w.Put(t, r.Type, r.ID, r.Body)
	}
	checkSearches(t, s, []searchCase{
		{"component with system and prefix", "Observation", "component-code-value-quantity=http://loinc.org|8480-6$gt130", "c2"},
		{"component of any system", "Observation", "component-code-value-quantity=8480-6$gt100", "c1,c2"},
		{"component not across components", "Observation", "component-code-value-quantity=8462-4$ge120", ""},
		{"component values ORed", "Observation", "component-code-value-quantity=8480-6$gt130,8462-4$lt85", "c1,c2"},
		{"component clauses ANDed", "Observation", "component-code-value-quantity=8480-6$gt100&component-code-value-quantity=8462-4$gt90", "c2"},
		{"code-value-quantity", "Observation", "code-value-quantity=http://loinc.org|8480-6$130", "c3"},
		{"code-value-quantity with a unit", "Observation", "code-value-quantity=8480-6$130|http://unitsofmeasure.org|mm[Hg]", "c3"},
		{"code-value-quantity of a system only", "Observation", "code-value-quantity=http://loinc.org|$130", "c3"},
		{"code-value-quantity not of components", "Observation", "code-value-quantity=8480-6$lt125", ""},
		{"combo of a component", "Observation", "combo-code-value-quantity=8480-6$lt125", "c1"},
		{"combo of both", "Observation", "combo-code-value-quantity=8480-6$ge130", "c2,c3"},
		{"code-value-concept", "Observation", "code-value-concept=1234-5$http://snomed.info/sct|260385009", "c4"},
		{"code-value-concept of any system", "Observation", "code-value-concept=http://loinc.org|1234-5$260385009", "c4"},
		{"code-value-concept of another code", "Observation", "code-value-concept=8480-6$260385009", ""},
		{"code-value-string", "Observation", "code-value-string=1234-5$pos", "c5"},
		{"code-value-date", "Observation", "code-value-date=9999-9$ge2020-01-01", "c6"},
		{"code-value-date before", "Observation", "code-value-date=9999-9$lt2020-01-01", ""},
		{"three components", "MolecularSequence", "chromosome-variant-coordinate=1$ge22125600$le22125700", "ms1"},
		{"three components of the first variant", "MolecularSequence", "chromosome-variant-coordinate=1$ge22125503$le22125504", "ms1"},
		{"three components not across variants", "MolecularSequence", "chromosome-variant-coordinate=1$ge22125600$le22125504", ""},
		{"three components of the window", "MolecularSequence", "chromosome-window-coordinate=1$lt22125501$gt22125509", "ms1"},
		{"three components of another chromosome", "MolecularSequence", "referenceseqid-variant-coordinate=NC_000002.12$ge1$ge1", ""},
		{"three components by sequence id", "MolecularSequence", "referenceseqid-window-coordinate=NC_000001.11$22125500$22125510", "ms1"},
		{"reference first", "DocumentReference", "relationship=DocumentReference/d0$replaces", "d1"},
		{"reference first of any type", "DocumentReference", "relationship=d0$replaces", "d1"},
		{"reference first, other code", "DocumentReference", "relationship=DocumentReference/d0$transforms", ""},
	})
}
