# One resource, one question: may this job see it? The per-resource form of the consent
# and redaction policies, as an enforcement point that asks once per resource would
# (HAPI FHIR's ConsentInterceptor canSeeResource). The clinical node decides per
# patient in batches instead (consent.rego, redaction.rego); this entry point serves
# single look-ups and the benchmark's per-resource baseline.
#
# input.now, input.job  as in consent.rego
# input.consents        every current consent of the resource's patient (terms)
# input.resource        as in redaction.rego
package paroma.access

import rego.v1

default allow := false

allow if {
	verdict := data.paroma.consent.decision(input.consents)
	verdict.decision == "PERMIT"
	data.paroma.redaction.allowed(verdict, input.resource)
}
