package main

// compartmentLinks is how resources of one type link to their patient.
type compartmentLinks struct {
	// params are the search parameters of the compartment definition.
	params []string
	// paths are the element paths behind them, dotted ("participant.actor").
	paths []string
}
