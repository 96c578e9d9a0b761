// Package vehicle is the simulated car: it keeps the digital-key whitelist the gateway sends on
// v/{vin}/keys, verifies and executes the commands that reach it through the cloud (v/{vin}/cmd)
// or over the local link (LinkServer), journals what it did on the local link for
// v/{vin}/events, keeps its state, keys, replay cache and journal in a store (CarStore; the
// bbolt file is package carstore), and drives
// around producing telemetry. Car holds the logic without any MQTT or HTTP; a Fleet (RunFleet)
// connects many cars to a broker and LinkServer puts them on the local link.
//
// One concept per file:
//
//	car.go, keys.go, local.go      the car and its checks: cloud commands, whitelists, the local
//	                               link's challenges and commands
//	state.go, motion.go            what a car knows about itself, and how it drives and charges
//	refusal.go                     refusals because of the car's state
//	fleet.go, carrun.go            the MQTT runtime: a Fleet of cars against one broker, and one
//	                               car's connection, queues and loop
//	garage.go, link.go             the cars of a process by VIN, and the local link's HTTP server
//
// What a person sees of a running fleet (progress lines) is vehicle-sim's (vehicle-sim/runcmd).
package vehicle
