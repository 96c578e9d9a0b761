// Package vehicle is the simulated car: it keeps the digital-key whitelist the gateway sends on
// v/{vin}/keys, verifies and executes the commands that reach it through the cloud (v/{vin}/cmd)
// or over the local link, journals what it did on the local link for v/{vin}/events, keeps its
// state, keys, replay cache and journal in a store (CarStore; the bbolt file is package
// carstore), and drives around producing telemetry. Car holds the logic without any MQTT or
// HTTP: package fleet connects the cars of a Garage to a broker, and package link serves them
// on the local link.
//
// One concept per file:
//
//	car.go, keys.go, local.go      the car and its checks: cloud commands, whitelists, the local
//	                               link's challenges and commands
//	state.go, motion.go            what a car knows about itself, and how it drives and charges
//	refusal.go                     refusals because of the car's state
//	garage.go                      the cars of a process by VIN, shared by the fleet and the link
//
// Beside it: fleet/ (the MQTT runtime: a Fleet of cars against one broker, and one car's
// connection, queues and loop), link/ (the local link's HTTP server), vehicletest/ and
// link/linktest/ (test support). What a person sees of a running fleet (progress lines) is
// vehicle-sim's (vehicle-sim/runcmd).
package vehicle
