import { metrics } from '@opentelemetry/api';
import { DataPointType, MeterProvider, MetricReader, type MetricData } from '@opentelemetry/sdk-metrics';

/** A reader that exports nothing: tests collect from it directly. */
class CollectingReader extends MetricReader {
  protected override async onForceFlush(): Promise<void> {}
  protected override async onShutdown(): Promise<void> {}
}

/** The instruments of the meter `nestjs-token-resource`, as the real OpenTelemetry SDK aggregates them. */
export interface RecordedMetrics {
  /** The sum of counter `name` over the data points whose attributes include `attributes`. */
  count(name: string, attributes?: Record<string, string>): Promise<number>;
  /**
   * How many values histogram `name` recorded (points matching `attributes`), their sum, and
   * in how many series (attribute sets).
   */
  histogram(name: string, attributes?: Record<string, string>): Promise<{ count: number; sum: number; series: number }>;
  /** Unregisters the global provider and shuts it down. */
  stop(): Promise<void>;
}

/**
 * Registers an SDK `MeterProvider` as the global one (before the application under test is
 * created: the library takes its meter at start-up) with a reader the test collects from.
 */
export function recordMetrics(): RecordedMetrics {
  const reader = new CollectingReader();
  const provider = new MeterProvider({ readers: [reader] });
  metrics.disable();
  metrics.setGlobalMeterProvider(provider);

  async function metric(name: string): Promise<MetricData | undefined> {
    const { resourceMetrics, errors } = await reader.collect();
    if (errors.length > 0) throw errors[0];
    const scope = resourceMetrics.scopeMetrics.find((s) => s.scope.name === 'nestjs-token-resource');
    return scope?.metrics.find((m) => m.descriptor.name === name);
  }
  const matches = (point: { attributes: Record<string, unknown> }, attributes: Record<string, string>) =>
    Object.entries(attributes).every(([key, value]) => point.attributes[key] === value);

  return {
    async count(name, attributes = {}) {
      const data = await metric(name);
      if (!data) return 0;
      if (data.dataPointType !== DataPointType.SUM) throw new Error(`${name} is no counter`);
      return data.dataPoints.filter((p) => matches(p, attributes)).reduce((sum, p) => sum + p.value, 0);
    },
    async histogram(name, attributes = {}) {
      const data = await metric(name);
      if (!data) return { count: 0, sum: 0, series: 0 };
      if (data.dataPointType !== DataPointType.HISTOGRAM) throw new Error(`${name} is no histogram`);
      const points = data.dataPoints.filter((p) => matches(p, attributes));
      return {
        count: points.reduce((n, p) => n + p.value.count, 0),
        sum: points.reduce((n, p) => n + (p.value.sum ?? 0), 0),
        series: points.length,
      };
    },
    async stop() {
      metrics.disable();
      await provider.shutdown();
    },
  };
}
