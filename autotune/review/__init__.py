"""review: reading the record after the fact (audit-log review). ``report`` draws the HTML
report from the audit trail, the journal and the stored samples. It sits above every loop stage
(it reads what verify judged, in verify's own units), where ``audit`` sits below verify (verify
writes its verdicts there)."""
