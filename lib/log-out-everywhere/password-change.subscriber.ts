import { Inject, Injectable, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import type { DataSource, EntitySubscriberInterface, ObjectLiteral, UpdateEvent } from 'typeorm';
import { defaultSubjectOf } from '../options/defaults.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { TOKEN_DATA_SOURCE, TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenResourceConfigError } from '../token-resource.exceptions.js';
import { registerSubscriber } from '../typeorm/register-subscriber.js';
import { LogOutEverywhereService } from './log-out-everywhere.service.js';

/**
 * With `logOutEverywhere.applyOnPasswordChange`, a TypeORM subscriber on
 * `logOutEverywhere.userEntity`: when a `save` changes `passwordField`, it logs the user
 * out everywhere in the save's own transaction (so a rolled-back change revokes nothing),
 * and again once that transaction commits (`repeatAfterCommit`).
 *
 * Only `save` reports which columns changed; `update()`, `upsert()`, query builders and
 * raw SQL are not seen: code that changes passwords that way calls
 * {@link LogOutEverywhereService.logOutOnPasswordChange} itself.
 */
@Injectable()
export class PasswordChangeSubscriber implements EntitySubscriberInterface<ObjectLiteral>, OnModuleInit, OnModuleDestroy {
  private unregister?: () => void;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    @Inject(TOKEN_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly logOut: LogOutEverywhereService,
  ) {}

  /**
   * Registers on the token table's data source. The user entity must live there too:
   * the revocation has to share the password change's transaction.
   *
   * @throws TokenResourceConfigError when `userEntity` is not an entity of that data source,
   *   `passwordField` not one of its columns, or it has no `id` column for the default `subjectOf`.
   */
  onModuleInit(): void {
    const { applyOnPasswordChange, userEntity } = this.options.logOutEverywhere;
    if (!applyOnPasswordChange || !userEntity) return;
    if (!this.dataSource.hasMetadata(userEntity)) {
      throw new TokenResourceConfigError(
        `nestjs-token-resource: logOutEverywhere.userEntity is not an entity of data source '${this.options.dataSource}', where the token table lives. Register it there: the log-out must run in the password change's transaction.`,
      );
    }
    const column = this.dataSource.getMetadata(userEntity).findColumnWithPropertyName(this.options.logOutEverywhere.passwordField);
    if (!column) {
      throw new TokenResourceConfigError(
        `nestjs-token-resource: logOutEverywhere.passwordField '${this.options.logOutEverywhere.passwordField}' is not a column of logOutEverywhere.userEntity.`,
      );
    }
    // The default would log out the subject 'undefined', or refuse every password change.
    if (
      this.options.logOutEverywhere.subjectOf === defaultSubjectOf &&
      !this.dataSource.getMetadata(userEntity).findColumnWithPropertyName('id')
    ) {
      throw new TokenResourceConfigError(
        "nestjs-token-resource: logOutEverywhere.userEntity has no 'id' column for the default subjectOf (u => String(u.id)). Set logOutEverywhere.subjectOf to the user's JWT sub, for example (u) => u.uuid.",
      );
    }
    this.unregister = registerSubscriber(this.dataSource, this);
  }

  /** Unregisters, so that a closed application leaves no subscriber on a shared data source. */
  onModuleDestroy(): void {
    this.unregister?.();
    this.unregister = undefined;
  }

  /** TypeORM: only events of the configured user entity reach this subscriber. */
  // eslint-disable-next-line @typescript-eslint/no-unsafe-function-type -- TypeORM's own signature
  listenTo(): Function | string {
    // eslint-disable-next-line @typescript-eslint/no-unsafe-function-type -- see above
    return this.options.logOutEverywhere.userEntity as Function | string;
  }

  /**
   * TypeORM: after the UPDATE of a user row, still inside the save's transaction. Runs
   * after rather than before so that a save that fails on its own UPDATE never revokes.
   */
  async afterUpdate(event: UpdateEvent<ObjectLiteral>): Promise<void> {
    if (!this.passwordChanged(event)) return;
    const user = { ...event.databaseEntity, ...event.entity };
    await this.logOut.logOutOnPasswordChange(user, event.manager);
  }

  private passwordChanged(event: UpdateEvent<ObjectLiteral>): boolean {
    const field = this.options.logOutEverywhere.passwordField;
    // `save` lists exactly the columns whose value differs from the row it loaded, so
    // saving other fields (or the same hash again) does not count as a change.
    return event.updatedColumns.some((column) => column.propertyName === field);
  }
}
