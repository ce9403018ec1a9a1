-- wrk script: patient-scoped searches for random re-identified copies of
-- the Synthea patients (ids 85-cK and 355-cK, K < copies).
local copies = 135
local queries = {
  "/fhir/R4/Observation?patient=%s&code=http%%3A%%2F%%2Floinc.org%%7C72166-2",
  "/fhir/R4/Encounter?patient=%s&date=ge2015-01-01&_sort=-date",
  "/fhir/R4/Condition?patient=%s&_include=Condition:encounter",
}
math.randomseed(os.time())
request = function()
  local base = ({"85", "355"})[math.random(2)]
  local id = string.format("%s-c%d", base, math.random(0, copies - 1))
  local q = queries[math.random(#queries)]
  return wrk.format("GET", string.format(q, id))
end
