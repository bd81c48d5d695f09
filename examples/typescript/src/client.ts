/**
 * The incident manager from TypeScript: alerts in, one incident through its
 * lifecycle, and every change watched live with StreamIncidents.
 *
 *   npx tsx src/client.ts --target 127.0.0.1:9000
 *
 * The stubs in src/gen are generated from ../../protos by `npx buf generate`
 * (protoc-gen-es); calls go over gRPC on HTTP/2 with Connect's Node transport.
 * Prints one JSON object saying what it saw; exits non-zero on any failure.
 */

import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

import type { DescEnum, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  AlertIngestionService,
  type StreamAlertsRequestSchema,
} from "./gen/incident_manager/v1/alert_ingestion_service_pb.js";
import {
  AckStatus,
  AckStatusSchema,
  type AlertAck,
  type AlertSchema,
} from "./gen/incident_manager/v1/alert_pb.js";
import {
  EventType,
  EventTypeSchema,
  type Incident,
  IncidentState,
  IncidentStateSchema,
  IncidentType,
  ResolutionMethod,
  ResolutionMethodSchema,
  Severity,
  SeveritySchema,
} from "./gen/incident_manager/v1/incident_pb.js";
import {
  IncidentService,
  type IncidentEvent,
  type StreamIncidentsRequestSchema,
} from "./gen/incident_manager/v1/incident_service_pb.js";

const SOURCE = "llm-sentinel";
const CALL_TIMEOUT_MS = 10_000;
// A live StreamIncidents call sees only events committed after the server
// registered it, and the server says nothing until the first event. Waiting
// a moment before changing anything keeps the first events in view.
const SUBSCRIBE_SETTLE_MS = 300;

/** What the client was asked to do. */
interface Options {
  target: string;
  streamTimeoutMs: number;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      target: { type: "string" },
      "stream-timeout": { type: "string", default: "10" },
    },
  });
  const target = values.target ?? process.env.INCIDENT_MANAGER_TARGET ?? "localhost:9000";
  const seconds = Number(values["stream-timeout"]);
  if (!Number.isFinite(seconds) || seconds <= 0) {
    throw new Error(`--stream-timeout must be a positive number of seconds`);
  }
  return { target, streamTimeoutMs: seconds * 1000 };
}

/** The proto name of an enum value (`ACK_STATUS_DUPLICATE`), as in proto3 JSON. */
function nameOf(schema: DescEnum, value: number): string {
  return schema.value[value]?.name ?? `${schema.typeName}(${value})`;
}

function check(condition: boolean, failure: string): asserts condition {
  if (!condition) {
    throw new Error(failure);
  }
}

/**
 * One StreamIncidents call read in the background, so the client can go on
 * calling while events arrive and later wait for the one it expects.
 */
class IncidentEvents {
  readonly seen: IncidentEvent[] = [];
  private readonly abort = new AbortController();
  private readonly reading: Promise<void>;
  private failure: unknown;
  private ended = false;
  private wake: () => void = () => {};

  constructor(
    client: Client<typeof IncidentService>,
    request: MessageInitShape<typeof StreamIncidentsRequestSchema>,
  ) {
    // Connect sends the request right away; reading starts at once so an
    // early error is caught here rather than left unhandled.
    this.reading = this.read(client.streamIncidents(request, { signal: this.abort.signal }));
  }

  private async read(responses: AsyncIterable<{ event?: IncidentEvent }>): Promise<void> {
    try {
      for await (const response of responses) {
        if (response.event) {
          this.seen.push(response.event);
          this.wake();
        }
      }
    } catch (error) {
      if (!this.abort.signal.aborted) {
        this.failure = error;
      }
    } finally {
      this.ended = true;
      this.wake();
    }
  }

  /** Waits until `found` holds for the events seen so far, at most `timeoutMs`. */
  async waitFor(found: (seen: IncidentEvent[]) => boolean, timeoutMs: number, what: string) {
    const deadline = Date.now() + timeoutMs;
    while (!found(this.seen)) {
      if (this.failure !== undefined) {
        throw this.failure;
      }
      check(!this.ended, `StreamIncidents ended before ${what}`);
      const left = deadline - Date.now();
      check(left > 0, `no ${what} within ${timeoutMs} ms`);
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }

  /** Ends the call (the server sees a cancellation) and waits for the reader. */
  async close(): Promise<void> {
    this.abort.abort();
    await this.reading;
  }
}

/** An alert from the latency detector; all of one run share a fingerprint. */
function latencyAlert(
  id: string,
  run: string,
  severity: Severity,
): MessageInitShape<typeof AlertSchema> {
  return {
    id,
    source: SOURCE,
    title: "p99 latency above 2s on gpt-4o",
    severity,
    type: IncidentType.PERFORMANCE,
    // The run's own endpoint gives this run its own fingerprint, so repeated
    // runs against one server open one incident each.
    affectedResources: ["model/gpt-4o", `endpoint/chat-${run}`],
    labels: { region: "eu-west-1", client: "typescript-example" },
  };
}

async function walk({ target, streamTimeoutMs }: Options): Promise<Record<string, unknown>> {
  const run = randomUUID().slice(0, 8);
  // gRPC always runs on HTTP/2: Connect's gRPC transport has no other mode.
  const transport = createGrpcTransport({ baseUrl: `http://${target}` });
  const alerts = createClient(AlertIngestionService, transport);
  const incidents = createClient(IncidentService, transport);
  const call = { timeoutMs: CALL_TIMEOUT_MS };

  // 1. Follow live events first, so the stream sees everything below.
  const events = new IncidentEvents(incidents, { sources: [SOURCE] });
  try {
    await sleep(SUBSCRIBE_SETTLE_MS);

    // 2. One alert, then another with the same fingerprint: a duplicate.
    const submit = async (id: string, severity: Severity) =>
      (await alerts.submitAlert({ alert: latencyAlert(id, run, severity) }, call)).ack;
    const first = await submit(`${run}-1`, Severity.P1);
    check(first?.status === AckStatus.ACCEPTED, `first alert: ${describeAck(first)}`);
    const incidentId = first.incidentId;
    const second = await submit(`${run}-2`, Severity.P0);
    check(
      second?.status === AckStatus.DUPLICATE && second.incidentId === incidentId,
      `second alert should be a duplicate of ${incidentId}: ${describeAck(second)}`,
    );

    // 3. Three more over one bidirectional stream: one ack each, in order.
    type StreamAlertsRequest = MessageInitShape<typeof StreamAlertsRequestSchema>;
    async function* moreAlerts(): AsyncIterable<StreamAlertsRequest> {
      for (let n = 3; n <= 5; n++) {
        yield { alert: latencyAlert(`${run}-${n}`, run, Severity.P2) };
      }
    }
    const streamed: AlertAck[] = [];
    for await (const response of alerts.streamAlerts(moreAlerts(), call)) {
      check(response.ack !== undefined, "StreamAlerts answered without an ack");
      streamed.push(response.ack);
    }
    check(streamed.length === 3, `StreamAlerts: ${streamed.length} acks for 3 alerts`);
    for (const ack of streamed) {
      check(
        ack.status === AckStatus.DUPLICATE && ack.incidentId === incidentId,
        `streamed alert should be a duplicate of ${incidentId}: ${describeAck(ack)}`,
      );
    }

    // 4. List the P0 incidents from this source, page by page. The incident
    // is P0: it rose to its most severe alert.
    let listed = 0;
    let totalSize = 0n;
    let etag = "";
    let pageToken = "";
    do {
      const page = await incidents.listIncidents(
        {
          severities: [Severity.P0],
          sources: [SOURCE],
          orderBy: "severity",
          pageSize: 50,
          pageToken,
        },
        call,
      );
      listed += page.incidents.length;
      totalSize = page.totalSize;
      etag = page.incidents.find((incident) => incident.id === incidentId)?.etag ?? etag;
      pageToken = page.nextPageToken;
    } while (pageToken);
    check(etag !== "", `ListIncidents did not list ${incidentId} among the P0 incidents`);

    // 5. Start investigating and assign it, unless someone changed it since
    // it was listed (the etag).
    const updated = (
      await incidents.updateIncident(
        {
          incident: {
            id: incidentId,
            state: IncidentState.INVESTIGATING,
            assignees: ["bob"],
            etag,
          },
          updateMask: { paths: ["state", "assignees"] },
          actor: "bob",
        },
        call,
      )
    ).incident;
    check(updated?.state === IncidentState.INVESTIGATING, `update left it ${stateOf(updated)}`);

    // 6. Resolve it.
    const resolved = (
      await incidents.resolveIncident(
        {
          id: incidentId,
          method: ResolutionMethod.MANUAL,
          rootCause: "a router config sent all traffic to one region",
          notes: "rolled back the router config",
          resolvedBy: "bob",
        },
        call,
      )
    ).incident;
    check(resolved?.state === IncidentState.RESOLVED, `resolve left it ${stateOf(resolved)}`);

    // 7. Everything above reached the stream; read until the RESOLVED event.
    const ours = () => events.seen.filter((event) => event.incidentId === incidentId);
    await events.waitFor(
      () => ours().some((event) => event.event?.type === EventType.RESOLVED),
      streamTimeoutMs,
      `RESOLVED event for ${incidentId} on StreamIncidents`,
    );
    const timeline = ours();
    check(
      timeline[0]?.event?.type === EventType.CREATED,
      `StreamIncidents missed the CREATED event (was the subscription late?)`,
    );
    const sequences = timeline.map((event) => event.sequence);

    return {
      target,
      incidentId,
      acks: {
        submitted: [first, second].map((ack) => nameOf(AckStatusSchema, ack.status)),
        streamed: streamed.map((ack) => nameOf(AckStatusSchema, ack.status)),
        incidentIds: [...new Set([first, second, ...streamed].map((ack) => ack.incidentId))],
      },
      listed: {
        severities: [nameOf(SeveritySchema, Severity.P0)],
        count: listed,
        totalSize: Number(totalSize),
      },
      updatedState: nameOf(IncidentStateSchema, updated.state),
      assignees: updated.assignees,
      finalState: nameOf(IncidentStateSchema, resolved.state),
      resolutionMethod: nameOf(ResolutionMethodSchema, resolved.resolution?.method ?? 0),
      severity: nameOf(SeveritySchema, resolved.severity),
      alertCount: Number(resolved.alertCount),
      eventTypes: timeline.map((event) => nameOf(EventTypeSchema, event.event?.type ?? 0)),
      eventSequencesIncrease: sequences.every(
        (sequence, i) => i === 0 || sequence > sequences[i - 1]!,
      ),
    };
  } finally {
    await events.close();
  }
}

function describeAck(ack: AlertAck | undefined): string {
  if (ack === undefined) {
    return "no ack";
  }
  const incident = ack.incidentId || "no incident";
  return `${nameOf(AckStatusSchema, ack.status)} for ${incident} (${ack.message})`;
}

function stateOf(incident: Incident | undefined): string {
  return incident ? nameOf(IncidentStateSchema, incident.state) : "no incident";
}

function describeError(error: unknown): string {
  if (error instanceof ConnectError) {
    return `${Code[error.code]}: ${error.rawMessage}`;
  }
  return error instanceof Error ? error.message : String(error);
}

try {
  const summary = await walk(parseOptions());
  process.stdout.write(`${JSON.stringify(summary)}\n`);
} catch (error) {
  process.stderr.write(`typescript client failed: ${describeError(error)}\n`);
  process.exitCode = 1;
}
